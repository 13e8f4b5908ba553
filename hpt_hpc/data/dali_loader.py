"""DALI loaders with the torchvision loaders' interface (``data.backend: dali``).

:class:`DaliPretrainLoader` is a drop-in for :class:`~hpt_hpc.data.loader.PretrainLoader`:
the same :class:`~hpt_hpc.data.dataset.ShardSampler` decides which images each rank sees
(per-epoch seeded global permutation, disjoint rank shards, equal steps per epoch on every
rank, ``set_epoch(epoch, step)`` positions the stream), so both backends read the same
images in the same order; only the augmentation randomness differs (DALI's pipeline seed,
derived from seed, rank and start position: reproducible, different per rank).
Colour jitter and grayscale are applied to each output batch by
:class:`~hpt_hpc.data.dali_colour.ColourStage` (same seeding).

Broken files never stop a run (see :mod:`hpt_hpc.data.dali_feed`): they are skipped,
named in a warning and counted in ``skipped``. If DALI still fails on a batch, the
pipeline is rebuilt at the same position with the suspect files quarantined.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import HptError
from .dali_colour import ColourStage
from .dali_feed import EvalFeed, FileReader, PretrainFeed
from .dali_pipelines import (eval_graph, multi_view_graph, pipeline_kwargs, resolve_device,
                             view_spec, view_specs)
from .dataset import ImageDataset, ShardSampler, SkippedImages
from .sources import DatasetError, ImageRecord
from .table import as_table
from .specs import eval_spec, normalisation

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, DataConfig, ProbeConfig

log = logging.getLogger(__name__)


def pipeline_seed(*parts: int) -> int:
    """A 31-bit DALI seed mixed from integers (seed, rank, position, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0]) >> 1


def to_torch(batch, device: str, copy: bool = True) -> torch.Tensor:
    """A DALI batch of equal-shape samples as a torch tensor that owns its memory, or (CPU,
    ``copy=False``) a view of DALI's buffer, valid only until the pipeline runs again."""
    tensor = batch.as_tensor()
    if device == "gpu":
        from nvidia.dali.plugin.pytorch import feed_ndarray
        out = torch.empty(tensor.shape(), dtype=torch.float32,
                          device=torch.device("cuda", torch.cuda.current_device()))
        feed_ndarray(tensor, out, cuda_stream=torch.cuda.current_stream())
        return out
    view = torch.from_dlpack(tensor)
    return view.clone() if copy else view


def _reason(exc: BaseException) -> str:
    """The informative line of a DALI error (what the operator "encountered")."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines[:-1]):
        if line == "encountered:":
            return lines[i + 1]
    return lines[0] if lines else type(exc).__name__


class _DaliBase:
    """Pipeline life cycle and failure recovery shared by both loaders."""

    device: str
    reader: FileReader
    _pipe = None
    _feed = None

    def _run(self):
        """One pipeline iteration; on a DALI failure, quarantine the files in flight and
        return None (the caller rebuilds at the same position). StopIteration passes."""
        try:
            return self._pipe.run()
        except StopIteration:
            raise
        except Exception as exc:
            feed_error = self._feed.error
            suspects = [i for batch in self._feed.in_flight for i in batch.indices]
            self._discard()
            if feed_error is not None:
                raise feed_error from None
            if not self.reader.quarantine(suspects):
                raise HptError(f"the DALI pipeline failed: {exc}") from exc
            log.warning("DALI failed on a batch (%s); decoding the %d file(s) in flight "
                        "with the reference decoder from now on", _reason(exc), len(suspects))
            return None

    def _discard(self) -> None:
        self._pipe, self._feed = None, None

    def close(self) -> None:
        """Release the DALI pipeline (and its threads / GPU memory)."""
        self._discard()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DaliPretrainLoader(_DaliBase):
    """Infinite iterator of batches of views from DALI: the 2 global views ``(B, C, S, S)``
    then the local ones ``(B, C, s, s)``, as :class:`~hpt_hpc.data.loader.PretrainLoader`.

    Same constructor and attributes as :class:`~hpt_hpc.data.loader.PretrainLoader`;
    ``workers`` (default ``data.workers``, at least 1) is DALI's thread count and
    ``device`` (``data.device``: auto | cpu | gpu) picks CPU or GPU operators.
    """

    backend = "dali"

    def __init__(self, records: Sequence[ImageRecord], aug_cfg: "AugmentConfig",
                 data_cfg: "DataConfig", batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, workers: Optional[int] = None, start_epoch: int = 0,
                 start_step: int = 0, fill_skipped: bool = True, prefetch: int = 2):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.device = resolve_device(data_cfg.device)
        self.spec = view_spec(aug_cfg, data_cfg)  # the global views' (local: view_specs)
        self._configs = aug_cfg, data_cfg
        self.records = as_table(records)
        self.sampler = ShardSampler(len(self.records), batch_size, seed, rank, world_size)
        if self.sampler.steps_per_epoch == 0:
            raise DatasetError(f"{len(self.records)} images are too few for batch size "
                               f"{batch_size} x {world_size} rank(s); lower the batch size")
        self.batch_size, self.fill_skipped = batch_size, fill_skipped
        self.seed, self.rank, self.prefetch = seed, rank, prefetch
        self.num_images = len(self.records)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.threads = max(1, data_cfg.workers if workers is None else workers)
        self.normalisation = normalisation(data_cfg)
        self.skipped = SkippedImages()
        self.reader = FileReader(self.records.paths, data_cfg.channels,
                                 self.skipped, data_cfg.max_pixels)
        self._colour = None
        self.set_epoch(start_epoch, start_step)

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Make the next batch batch ``step`` of epoch ``epoch`` (for resuming)."""
        self.sampler.set_epoch(epoch, step)
        self.epoch, self.step = int(epoch), int(step)
        self._discard()

    def _build(self) -> None:
        self._feed = PretrainFeed(self.reader, self.sampler, self.fill_skipped,
                                  self.epoch, self.step)
        position = self.epoch * self.steps_per_epoch + self.step
        kwargs = pipeline_kwargs(self.batch_size, self.threads, self.device,
                                 pipeline_seed(self.seed, self.rank, position), self.prefetch)
        specs = view_specs(*self._configs, self.spec)
        self._pipe = multi_view_graph(self._feed, specs, self.device, **kwargs)
        self._pipe.build()
        colour = ColourStage(self.spec, *self.normalisation,
                             seed=pipeline_seed(self.seed, self.rank, position, 1))
        self._colour = colour if colour.active and not self.spec.colour_in_dali else None

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, ...]]:
        while True:
            if self._pipe is None:
                self._build()
            outputs = self._run()
            if outputs is None:
                continue
            *views, meta = outputs
            self._feed.in_flight.popleft()
            _, epoch, step = (int(v) for v in meta.as_array()[0])
            self.epoch, self.step = (epoch, step + 1) if step + 1 < self.steps_per_epoch \
                else (epoch + 1, 0)
            colour = self._colour  # writes a new tensor: no copy of DALI's output needed
            views = [to_torch(v, self.device, copy=colour is None) for v in views]
            if colour is not None:  # in view order: the same draws as before multi-crop
                views = [colour(v) for v in views]
            yield tuple(views)


class DaliEvalSetup:
    """What both DALI evaluation loaders (image files here, tar shards in
    :mod:`.dali_shards`) share: their arguments as :class:`~hpt_hpc.data.loader.EvalLoader`
    takes them, the label lookup, the number of batches of a pass."""

    def _setup(self, table, data_cfg, batch_size: int, train: bool, workers: Optional[int],
               num_classes: Optional[int], multi_label: Optional[bool], seed: int,
               probe) -> None:
        if not len(table):
            raise DatasetError("no images to evaluate on")
        multi_label = table.multi_label if multi_label is None else multi_label
        self.device = resolve_device(data_cfg.device)
        self.spec = eval_spec(data_cfg, probe)
        self.labels = ImageDataset(table, None, data_cfg.channels, num_classes, multi_label)
        self.num_images, self.num_classes = len(table), self.labels.num_classes
        self.multi_label, self.train, self.seed = multi_label, train, seed
        self.batch_size = int(batch_size)
        self.threads = max(1, data_cfg.workers if workers is None else workers)
        self.skipped = SkippedImages()
        self.passes = 0

    def __len__(self) -> int:
        return -(-self.num_images // self.batch_size)

    def _targets(self, rows) -> torch.Tensor:
        if self.multi_label:
            return torch.stack([self.labels.label(i) for i in rows])
        return torch.tensor([self.labels.label(i) for i in rows], dtype=torch.int64)


class DaliEvalLoader(_DaliBase, DaliEvalSetup):
    """Finite loader of ``(images, labels)`` from DALI; each ``iter()`` is one pass.

    Same arguments and labels as :class:`~hpt_hpc.data.loader.EvalLoader`: the test view
    (``train=False``, records in order) or the training view (``train=True``, a seeded
    permutation per pass) of ``eval_spec(data_cfg, probe)``. Unreadable images are dropped
    and named in ``skipped``.
    """

    backend = "dali"

    def __init__(self, records: Sequence[ImageRecord], data_cfg: "DataConfig",
                 batch_size: int, train: bool = False, workers: Optional[int] = None,
                 num_classes: Optional[int] = None, multi_label: Optional[bool] = None,
                 seed: int = 0, probe: Optional["ProbeConfig"] = None):
        records = as_table(records)
        self._setup(records, data_cfg, batch_size, train, workers, num_classes, multi_label,
                    seed, probe)
        self.reader = FileReader(records.paths, data_cfg.channels, self.skipped,
                                 data_cfg.max_pixels)

    def _order(self):
        if not self.train:
            return range(self.num_images)
        return np.random.default_rng([self.seed, self.passes]).permutation(self.num_images)

    def _build(self, order, position: int) -> None:
        self._feed = EvalFeed(self.reader, order, self.batch_size)
        self._feed.position = position
        kwargs = pipeline_kwargs(self.batch_size, self.threads, self.device,
                                 pipeline_seed(self.seed, self.passes, position))
        self._pipe = eval_graph(self._feed, self.spec, self.device, self.train, **kwargs)
        self._pipe.build()

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        order, position = self._order(), 0
        self.passes += 1
        try:
            while True:
                if self._pipe is None:
                    self._build(order, position)
                try:
                    outputs = self._run()
                except StopIteration:
                    return
                if outputs is None:
                    continue
                images, meta = outputs
                self._feed.in_flight.popleft()
                meta = meta.as_array()
                position = self._feed.in_flight[0].step if self._feed.in_flight \
                    else self._feed.position
                yield to_torch(images, self.device), self._targets(meta[:, 0].tolist())
        finally:
            self._discard()
