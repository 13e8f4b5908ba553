"""Torchvision data loading: the infinite sharded pretraining loader and the finite
evaluation loader over :class:`~hpt_hpc.data.dataset.ImageDataset`. Pick a backend with
:func:`hpt_hpc.data.backends.build_pretrain_loader` / ``build_eval_loader``.

Unreadable images are dropped by the collate function and collected in ``skipped`` (see
:mod:`hpt_hpc.data.dataset`). The pretraining loader tops such a batch up from the rank's
own shard (``fill_skipped``) so every step has ``batch_size`` images and every rank the same
number of steps.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler
from torch.utils.data._utils.collate import default_collate

from .dataset import (ImageDataset, ShardSampler, SkippedImages, SkippedItem,  # noqa: F401
                      collate_skipping, ignore_job_signals)
from .sources import DatasetError, ImageRecord
from .table import as_table
from .transforms import (build_eval_transform, build_probe_train_transform,
                         build_pretrain_transform)

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, DataConfig, ProbeConfig


def _data_loader(dataset, batch_size, sampler, workers, seed, drop_last) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skipping, drop_last=drop_last,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
                      worker_init_fn=ignore_job_signals,
                      generator=torch.Generator().manual_seed(seed))


def _shutdown(loader: DataLoader) -> None:
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


class _WorkerLoader:
    """Shared lifetime of the loaders: ``close()`` (and ``with``) stops worker processes."""

    _loader: DataLoader

    def close(self) -> None:
        """Stop the worker processes."""
        _shutdown(self._loader)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PretrainLoader(_WorkerLoader):
    """Infinite iterator of batches of views: a tuple of the 2 global views ``(B, C, S, S)``
    then the ``augment.local_crops.number`` local ones ``(B, C, s, s)``
    (:func:`~hpt_hpc.data.specs.view_crops`).

    Epoch ``e`` uses the permutation seeded ``seed + e``; ranks get disjoint shards and the
    same ``steps_per_epoch``. ``epoch`` / ``step`` tell where the next batch comes from.
    """

    def __init__(self, records: Sequence[ImageRecord], aug_cfg: "AugmentConfig",
                 data_cfg: "DataConfig", batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, workers: Optional[int] = None, start_epoch: int = 0,
                 start_step: int = 0, fill_skipped: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = ImageDataset(records, build_pretrain_transform(aug_cfg, data_cfg),
                                    data_cfg.channels, max_pixels=data_cfg.max_pixels)
        self.sampler = ShardSampler(len(self.dataset), batch_size, seed, rank, world_size)
        if self.sampler.steps_per_epoch == 0:
            raise DatasetError(f"{len(self.dataset)} images are too few for batch size "
                               f"{batch_size} x {world_size} rank(s); lower the batch size")
        self.batch_size, self.fill_skipped = batch_size, fill_skipped
        self.num_images = len(self.dataset)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self.skipped = SkippedImages()
        workers = data_cfg.workers if workers is None else workers
        self._loader = _data_loader(self.dataset, batch_size, self.sampler, workers,
                                    seed * 1000003 + rank, drop_last=True)
        self.set_epoch(start_epoch, start_step)

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        """Make the next batch batch ``step`` of epoch ``epoch`` (for resuming)."""
        self.sampler.set_epoch(epoch, step)
        self.epoch, self.step = int(epoch), int(step)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, ...]]:
        while True:
            self.sampler.set_epoch(self.epoch, self.step)
            for views, _, _, skipped in self._loader:
                self.skipped.add(skipped)
                if skipped and self.fill_skipped:
                    views = self._top_up(views)
                self.step += 1
                if views is not None:
                    yield tuple(views)
            self.epoch, self.step = self.epoch + 1, 0

    def _top_up(self, views):
        """Fill a batch with readable images that follow it in this rank's epoch order."""
        have = 0 if views is None else views[0].shape[0]
        order = self.sampler.epoch_indices(self.epoch)
        start = (self.step + 1) * self.batch_size
        extra = []
        for k in range(len(order)):
            if have + len(extra) == self.batch_size:
                break
            index = order[(start + k) % len(order)]
            if self.dataset.records.path(index) in self.skipped:
                continue
            item = self.dataset[index]
            if isinstance(item, SkippedItem):
                self.skipped.add([item])
            else:
                extra.append(item)
        if have + len(extra) < self.batch_size:
            raise DatasetError(f"rank {self.sampler.rank} found too few readable images to "
                               "fill a batch; run `hpt-hpc data check` on the dataset")
        more = default_collate(extra)[0]
        if views is None:
            return more
        return [torch.cat([view, extra_view]) for view, extra_view in zip(views, more)]


class EvalLoader(_WorkerLoader):
    """Finite loader of ``(images, labels)``; each ``iter()`` is one pass over the records.

    Labels are a LongTensor (single-label; ``-1`` for unlabelled) or a float multi-hot
    tensor ``(B, num_classes)``. Images get the test view (``train=False``, in order) or the
    training view (``train=True``, shuffled) of ``eval_spec(data_cfg, probe)``. Unreadable
    images are dropped and collected in ``skipped``.
    """

    def __init__(self, records: Sequence[ImageRecord], data_cfg: "DataConfig",
                 batch_size: int, train: bool = False, workers: Optional[int] = None,
                 num_classes: Optional[int] = None, multi_label: Optional[bool] = None,
                 seed: int = 0, probe: Optional["ProbeConfig"] = None):
        records = as_table(records)
        if not len(records):
            raise DatasetError("no images to evaluate on")
        if multi_label is None:
            multi_label = records.multi_label
        transform = build_probe_train_transform(data_cfg, probe) if train else \
            build_eval_transform(data_cfg, probe)
        self.dataset = ImageDataset(records, transform, data_cfg.channels, num_classes,
                                    multi_label, data_cfg.max_pixels)
        self.num_images, self.num_classes = len(records), self.dataset.num_classes
        self.multi_label, self.skipped = multi_label, SkippedImages()
        sampler = RandomSampler(self.dataset, generator=torch.Generator().manual_seed(seed)) \
            if train else SequentialSampler(self.dataset)
        workers = data_cfg.workers if workers is None else workers
        self._loader = _data_loader(self.dataset, batch_size, sampler, workers, seed,
                                    drop_last=False)

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        for images, labels, _, skipped in self._loader:
            self.skipped.add(skipped)
            if images is not None:
                yield images, labels

