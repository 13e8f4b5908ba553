"""DALI loaders over tar shards (``format: shards``, ``data.backend: dali``), read by
DALI's own ``fn.readers.webdataset`` with the index files ``hpt-hpc data shard`` wrote.

Same interface and semantics as the torchvision shard loaders
(:mod:`hpt_hpc.data.shard_loader`): disjoint samples per rank (DALI's ``shard_id`` /
``num_shards``: rank ``r`` reads the ``r``-th contiguous range of the packed samples), a
shuffle buffer of ``data.shuffle_buffer`` samples, a stream that is a function of the
seed and the epoch (a pipeline per epoch, seeded by seed, rank and epoch), the same
``steps_per_epoch`` on every rank. ``set_epoch(e, step)`` rebuilds epoch ``e`` and runs
(and drops) its first ``step`` batches, so a resumed stage sees the same stream: DALI
skips no sample (a corrupt image or a shard of the wrong size fails the stage in one
line), so the batches it drops are those the unbroken run trained on. The two
backends read different samples in a different order (each is reproducible on its own).

The readers take the encoded bytes straight to DALI's decoder: only splits whose
manifest found every image decodable by DALI as the reference decodes it (8-bit
grey/RGB JPEG and PNG) come here; :func:`dali_ready` says which.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

import nvidia.dali.fn as fn

from ..errors import HptError
from .dali_colour import ColourStage
from .dali_loader import DaliEvalSetup, pipeline_seed, to_torch
from .dali_pipelines import (eval_graph, multi_view_graph, pipeline_kwargs, resolve_device,
                             view_spec, view_specs)
from .dataset import SkippedImages
from .shard_set import ShardTable
from .sources import DatasetError
from .specs import normalisation

IMAGE_EXTS = "png;jpg;jpeg"  # what dali_ready admits


def dali_ready(table: ShardTable) -> bool:
    """True when every packed image goes to DALI's decoder unchanged (the manifest's
    ``dali_indirect`` count is 0)."""
    return table.manifest.get("dali_indirect", {}).get("count", 1) == 0


@dataclass(frozen=True)
class ShardReader:
    """The ``fn.readers.webdataset`` of one pipeline (what ``_source`` builds)."""

    paths: Tuple[str, ...]
    index_paths: Tuple[str, ...]
    shard_id: int
    num_shards: int
    shuffle: int
    seed: int

    def dali_outputs(self):
        images = fn.readers.webdataset(
            paths=list(self.paths), index_paths=list(self.index_paths), ext=[IMAGE_EXTS],
            missing_component_behavior="error", random_shuffle=self.shuffle > 1,
            initial_fill=max(1, self.shuffle), seed=self.seed, shard_id=self.shard_id,
            num_shards=self.num_shards, stick_to_shard=True, name="shards")
        return images, fn.get_property(images, key="source_info")


def rows_of(meta) -> list:
    """The packed rows of a batch from its ``source_info`` (``tar:offset:<row>.<ext>``)."""
    return [int(bytes(np.array(meta[i])).decode().rsplit(":", 1)[1].split(".")[0])
            for i in range(len(meta))]


def _reader(table: ShardTable, shard_id: int, num_shards: int, shuffle: int,
            seed: int) -> ShardReader:
    return ShardReader(tuple(s.path for s in table.shards),
                       tuple(s.index_path for s in table.shards), shard_id, num_shards,
                       shuffle, seed)


def _check_sizes(table: ShardTable) -> None:
    """Refuse shards whose size is not the manifest's (truncated, replaced) before DALI
    reads past their end: one line naming the first."""
    for entry in table.manifest.get("shards", []):
        path = os.path.join(os.path.dirname(table.shards[0].path), entry["name"])
        size = os.path.getsize(path) if os.path.isfile(path) else -1
        if size != entry["bytes"]:
            raise DatasetError(f"shard {path} is {'missing' if size < 0 else f'{size} bytes'}"
                               f", its manifest says {entry['bytes']} bytes: pack the split "
                               "again with `hpt-hpc data shard` (or read it with "
                               "data.backend torchvision, which skips what is damaged)")


def _run(pipe):
    """``pipe.run()``; DALI's failure (a damaged shard, a corrupt image: DALI skips no
    sample) as one line: the shard when DALI names it, else the operator's own cause."""
    try:
        return pipe.run()
    except Exception as exc:  # noqa: BLE001 - DALI reports a damaged shard as an error
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        cause = lines[lines.index("encountered:") + 1:] if "encountered:" in lines else []
        line = next((ln for ln in lines if ".tar" in ln), next(iter(cause), next(
            (ln for ln in lines if "rror" in ln), lines[0] if lines else type(exc).__name__)))
        raise HptError(f"DALI could not read the shards: {line[:300]}; `hpt-hpc data check` "
                       "names the damaged shard (or read them with data.backend "
                       "torchvision, which skips it)") from None


class DaliShardPretrainLoader:
    """The pretraining loader of :mod:`hpt_hpc.data.dali_loader` over shards."""

    backend = "dali"

    def __init__(self, table: ShardTable, aug_cfg, data_cfg, batch_size: int, seed: int,
                 rank: int = 0, world_size: int = 1, workers: Optional[int] = None,
                 start_epoch: int = 0, start_step: int = 0, fill_skipped: bool = True,
                 prefetch: int = 2):
        _check_sizes(table)
        self.device = resolve_device(data_cfg.device)
        self.table, self._configs = table, (aug_cfg, data_cfg)
        self.spec = view_spec(aug_cfg, data_cfg)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self.world_size, self.prefetch = world_size, prefetch
        self.num_images = len(table)
        self.steps_per_epoch = (len(table) // world_size) // batch_size
        if self.steps_per_epoch == 0:
            raise DatasetError(f"{len(table)} images are too few for batch size "
                               f"{batch_size} x {world_size} rank(s); lower the batch size")
        self.threads = max(1, data_cfg.workers if workers is None else workers)
        self.normalisation = normalisation(data_cfg)
        self.skipped = SkippedImages()
        self.rows: list = []  # the packed rows of the last batch (tests, diagnostics)
        self._pipe = None
        self.set_epoch(start_epoch, start_step)

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Make the next batch batch ``step`` of epoch ``epoch`` (for resuming)."""
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step {step} outside epoch of {self.steps_per_epoch} steps")
        self.epoch, self.step, self._pipe = int(epoch), int(step), None

    def _build(self) -> None:
        data_cfg = self._configs[1]
        reader = _reader(self.table, self.rank, self.world_size, data_cfg.shuffle_buffer,
                         pipeline_seed(self.seed, self.rank, self.epoch, 2))
        kwargs = pipeline_kwargs(self.batch_size, self.threads, self.device,
                                 pipeline_seed(self.seed, self.rank, self.epoch),
                                 self.prefetch)
        self._pipe = multi_view_graph(reader, view_specs(*self._configs, self.spec),
                                      self.device, **kwargs)
        self._pipe.build()
        colour = ColourStage(self.spec, *self.normalisation,
                             seed=pipeline_seed(self.seed, self.rank, self.epoch, 1))
        self._colour = colour if colour.active and not self.spec.colour_in_dali else None
        for _ in range(self.step):  # the batches before a resume point: run and dropped
            self._views()

    def _views(self):
        *views, meta = _run(self._pipe)
        self.rows = rows_of(meta)
        colour = self._colour
        views = [to_torch(v, self.device, copy=colour is None) for v in views]
        return [colour(v) for v in views] if colour is not None else views

    def __iter__(self):
        while True:
            if self._pipe is None:
                self._build()
            views = self._views()
            self.step += 1
            if self.step == self.steps_per_epoch:
                self.epoch, self.step, self._pipe = self.epoch + 1, 0, None
            yield tuple(views)

    def close(self) -> None:
        """Release the DALI pipeline."""
        self._pipe = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaliShardEvalLoader(DaliEvalSetup):
    """The evaluation loader of :mod:`hpt_hpc.data.dali_loader` over shards: the test view
    in the packed order, or the training view through the shuffle buffer (reseeded per
    pass); each ``iter()`` is one pass."""

    backend = "dali"

    def __init__(self, table: ShardTable, data_cfg, batch_size: int, train: bool = False,
                 workers: Optional[int] = None, num_classes: Optional[int] = None,
                 multi_label: Optional[bool] = None, seed: int = 0, probe=None):
        self._setup(table, data_cfg, batch_size, train, workers, num_classes, multi_label,
                    seed, probe)
        _check_sizes(table)
        self.table, self.data_cfg = table, data_cfg

    def __iter__(self):
        shuffle = self.data_cfg.shuffle_buffer if self.train else 0
        reader = _reader(self.table, 0, 1, shuffle, pipeline_seed(self.seed, self.passes, 2))
        kwargs = pipeline_kwargs(self.batch_size, self.threads, self.device,
                                 pipeline_seed(self.seed, self.passes))
        self.passes += 1
        pipe = eval_graph(reader, self.spec, self.device, self.train, **kwargs)
        pipe.build()
        left = self.num_images
        while left > 0:
            images, meta = _run(pipe)
            keep = min(left, self.batch_size)  # the reader wraps round into the next pass
            rows = rows_of(meta)[:keep]
            left -= keep
            yield to_torch(images, self.device)[:keep], self._targets(rows)

    def close(self) -> None:
        """Nothing held between passes."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
