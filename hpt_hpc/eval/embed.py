"""Features of a dataset split written to disk (``hpt-hpc embed``): ``<out>.npy``
(float32, one row per readable image, in listing order) and ``<out>.index.csv`` (row,
path, labels). Batches are appended to a raw file as they come (memory: one batch), and
the ``.npy`` header is written once the row count is known."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data import build_eval_loader
from ..progress import Progress
from .runner import EXTRACT_BATCH, seeded_backbone
from .splits import kept_paths, split_records

COPY_CHUNK = 1 << 24


def embed_split(cfg: ExperimentConfig, dataset: str, split: str, checkpoint: Optional[str],
                out: Path, device) -> Tuple[int, int]:
    """Write the features of ``split``; returns ``(rows, dimensions)``."""
    device = torch.device(device)
    records = split_records(cfg, dataset, split)
    backbone = seeded_backbone(cfg, checkpoint).to(device).eval()
    loader = build_eval_loader(records, cfg.data, batch_size=EXTRACT_BATCH, probe=cfg.probe)
    out = Path(out).with_suffix(".npy")
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_name(f".{out.name}.{os.getpid()}.raw")
    rows, dim = 0, 0
    try:
        with open(raw, "wb") as handle, torch.no_grad():
            progress = Progress(f"embed {dataset}/{split}", len(loader), cfg.progress_seconds,
                                images_per_step=EXTRACT_BATCH)
            for batch, (images, _) in enumerate(progress.timed(loader), 1):
                feats = backbone(images.to(device)).flatten(1).float().cpu().numpy()
                handle.write(np.ascontiguousarray(feats, dtype="<f4").tobytes())
                rows, dim = rows + feats.shape[0], feats.shape[1]
                progress.update(batch)
        _write_npy(raw, out, rows, dim)
    finally:
        raw.unlink(missing_ok=True)
    kept = set(kept_paths(records, loader))
    index = out.with_suffix(".index.csv")
    with open(index, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "path", "labels"])
        row = 0
        for record in records:
            if record.path in kept:
                writer.writerow([row, record.path, " ".join(map(str, record.labels))])
                row += 1
    return rows, dim


def _write_npy(raw: Path, out: Path, rows: int, dim: int) -> None:
    """``.npy`` header for (rows, dim) float32, then the raw rows, copied in chunks."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as target, open(raw, "rb") as source:
        header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
        np.lib.format.write_array_header_2_0(target, header)
        while chunk := source.read(COPY_CHUNK):
            target.write(chunk)
    os.replace(tmp, out)
