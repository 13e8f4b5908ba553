"""Features of a dataset split written to disk (``hpt-hpc embed``), labelled or not.

The output name is a prefix, taken as typed (a suffix is appended, never replaced):

* ``<out>.npy``: float32, one row per readable image, in listing order;
* ``<out>.index.csv``: a first line ``# root: <folder>`` (the listing's root: the split's
  folder, or a file list's folder), then the CSV columns ``row,path,labels``; ``path`` is
  relative to the root (``os.path.join(root, path)``; a listed file outside the root stays
  absolute), ``labels`` the image's integer labels separated by spaces, empty for
  unlabelled images (``format: folder``).

Batches are appended to a raw file as they come (memory: one batch); the ``.npy`` header
is written once the row count is known. Every file is written atomically, as the umask
says, and never over one of the command's inputs (:mod:`hpt_hpc.files`).
"""
from __future__ import annotations

import csv
import os
from contextlib import suppress
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from ..config import ExperimentConfig, InitRef
from ..device import resolve_device
from ..data import build_eval_loader
from ..data.sources import split_location
from ..files import (OutputError, atomic_write, make_folder, refuse_inputs,
                     remove_stale_temporaries, temporary_beside, writing)
from ..plan import EmbedPlan
from ..progress import Progress
from .lineage import checkpoint_lineage, log_embedding
from .runner import EXTRACT_BATCH, seeded_backbone
from .splits import dataset_config, kept_paths, listed_split

COPY_CHUNK = 1 << 24
ROOT_LINE = "# root: "  # the index's first line: ROOT_LINE + the root folder
INDEX_COLUMNS = ("row", "path", "labels")


def embed_outputs(out: os.PathLike) -> Tuple[Path, Path]:
    """``(<out>.npy, <out>.index.csv)``: the names of the prefix ``out``, appended."""
    text = os.fspath(out)
    prefix = Path(text)
    if text.endswith(".npy"):
        raise OutputError(f"the output name {text!r} ends in .npy, but it is a name prefix: "
                          f"embed writes <prefix>.npy and <prefix>.index.csv (give "
                          f"{text[:-len('.npy')]!r})")
    if not prefix.name or prefix.is_dir():
        raise OutputError(f"the output name {text!r} is a folder; give a name prefix in it "
                          f"(embed writes <prefix>.npy and <prefix>.index.csv)")
    return (prefix.with_name(prefix.name + ".npy"),
            prefix.with_name(prefix.name + ".index.csv"))


def embed_split(cfg: ExperimentConfig, dataset: str, split: Optional[str],
                checkpoint: Optional[str], out: os.PathLike, device,
                inputs: Optional[Mapping[str, os.PathLike]] = None) -> Tuple[int, int]:
    """Write the features of ``split`` (None: ``test``, or ``train`` for an unlabelled
    folder: the folder itself unless it has a ``train/``) under the prefix ``out``; returns
    ``(rows, dimensions)``. ``inputs`` (``{what: path}``) adds the caller's inputs (its
    config) to those an output must not replace: the checkpoint and the split's list."""
    features, index = embed_outputs(out)
    ds_cfg = dataset_config(cfg, dataset)
    split = split or ("train" if ds_cfg.format == "folder" else "test")
    refuse_inputs([features, index], {
        "the checkpoint this command reads": checkpoint or "",
        f"the list of split {split!r}": split_location(ds_cfg, split),
        **(inputs or {})})  # listed images end in an image extension: never an output
    device = torch.device(device)
    records = listed_split(cfg, dataset, split)
    backbone = seeded_backbone(cfg, checkpoint).to(device).eval()
    loader = build_eval_loader(records, cfg.data, batch_size=EXTRACT_BATCH, probe=cfg.probe)
    make_folder(features.parent)  # a read-only folder or a full disk: before any work
    for target in (features, index):
        remove_stale_temporaries(target)
    raw = temporary_beside(features, "raw")
    rows, dim = 0, 0
    try:
        with writing(features), open(raw, "wb") as handle, \
                torch.no_grad():
            progress = Progress(f"embed {dataset}/{split}", len(loader), cfg.progress_seconds,
                                images_per_step=EXTRACT_BATCH)
            for batch, (images, _) in enumerate(progress.timed(loader), 1):
                feats = backbone(images.to(device)).flatten(1).float().cpu().numpy()
                handle.write(np.ascontiguousarray(feats, dtype="<f4").tobytes())
                rows, dim = rows + feats.shape[0], feats.shape[1]
                progress.update(batch)
        kept = set(kept_paths(records, loader))
        # the index is renamed into place after the features: both files or neither
        with atomic_write(index, "w", newline="", encoding="utf-8",
                          errors="surrogateescape") as handle:
            handle.write(f"{ROOT_LINE}{records.root}\n")
            writer = csv.writer(handle)
            writer.writerow(INDEX_COLUMNS)
            row = 0
            for i, record in enumerate(records):
                if record.path in kept:
                    writer.writerow([row, records.relative_path(i),
                                     " ".join(map(str, record.labels))])
                    row += 1
            _write_npy(raw, features, rows, dim)
    finally:
        with suppress(OSError):
            raw.unlink(missing_ok=True)
    return rows, dim


def embed_plan(cfg: ExperimentConfig, dataset: str, split: Optional[str], ref: InitRef,
               out: os.PathLike, inputs: Optional[Mapping[str, os.PathLike]] = None
               ) -> EmbedPlan:
    """The plan of ``hpt-hpc embed``: the output name and the dataset checked here (one
    line, before any job)."""
    embed_outputs(out)
    dataset_config(cfg, dataset)
    return EmbedPlan(cfg, dataset, split, ref, os.fspath(out), f"embed {dataset}",
                     inputs={k: os.fspath(v) for k, v in (inputs or {}).items()})


def run_embed_plan(plan: EmbedPlan) -> Dict[str, Any]:
    """What ``hpt-hpc embed`` runs, in this process or as a job: resolve the checkpoint
    (its lineage names the run), write the features, log the embed run. Returns the two
    files written, the rows and the dimensions."""
    cfg = plan.config
    lineage = checkpoint_lineage(cfg, plan.checkpoint, who="embed")
    rows, dim = embed_split(cfg, plan.dataset, plan.split, lineage.path, plan.out,
                            resolve_device(cfg.device), plan.inputs)
    log_embedding(lineage, plan.checkpoint, plan.dataset, plan.split,
                  {"out": plan.out, "rows": rows, "dim": dim})
    features, index = embed_outputs(plan.out)
    return {"features": str(features), "index": str(index), "rows": rows, "dim": dim}


def _write_npy(raw: Path, out: Path, rows: int, dim: int) -> None:
    """``.npy`` header for (rows, dim) float32, then the raw rows, copied in chunks."""
    with atomic_write(out) as target, open(raw, "rb") as source:
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
        np.lib.format.write_array_header_2_0(target, header)
        while chunk := source.read(COPY_CHUNK):
            target.write(chunk)
