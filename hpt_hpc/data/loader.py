"""Torch data loading: a dataset over image records, the infinite sharded MoCo pretraining
loader and the finite evaluation loader. ``build_pretrain_loader`` / ``build_eval_loader``
return the NVIDIA DALI loaders of :mod:`hpt_hpc.data.dali_loader` instead when
``data.backend`` is ``dali`` (same interface; the stage engine does not know which it gets).

Unreadable images never crash a run: the dataset returns a :class:`SkippedItem`, the collate
function drops it and hands its path back with the batch, and the main process collects the
paths in a :class:`SkippedImages` (one warning per file). The pretraining loader tops such a
batch up from the rank's own shard (``fill_skipped``) so every step has ``batch_size`` images
and every rank the same number of steps.
"""
from __future__ import annotations

import logging
from typing import (TYPE_CHECKING, Dict, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple)

import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, SequentialSampler, Sampler
from torch.utils.data._utils.collate import default_collate

from ..errors import HptError
from .images import UnreadableImage, load_image
from .sources import DatasetError, ImageRecord
from .transforms import (build_eval_transform, build_probe_train_transform,
                         build_two_view_transform)

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, DataConfig

log = logging.getLogger(__name__)


class SkippedItem(NamedTuple):
    """What the dataset returns instead of a sample for an unreadable image."""

    path: str
    reason: str


class SkippedImages:
    """Unique unreadable images seen by a loader (main process); warns once per file."""

    def __init__(self):
        self._reasons: Dict[str, str] = {}

    def add(self, items: Sequence[Tuple[str, str]]) -> None:
        for path, reason in items:
            if path not in self._reasons:
                self._reasons[path] = reason
                log.warning("skipping unreadable image %s (%s); `hpt data check` lists all "
                            "such files", path, reason)

    def __contains__(self, path: str) -> bool:
        return path in self._reasons

    @property
    def count(self) -> int:
        return len(self._reasons)

    @property
    def paths(self) -> List[str]:
        return list(self._reasons)

    @property
    def reasons(self) -> Dict[str, str]:
        return dict(self._reasons)


class ImageDataset(Dataset):
    """``records[i]`` -> ``(transform(image), label, i)`` or a :class:`SkippedItem`.

    ``label`` is the first label (``-1`` when unlabelled), or with ``multi_label`` a float
    multi-hot tensor of length ``num_classes``.
    """

    def __init__(self, records: Sequence[ImageRecord], transform=None, channels: int = 3,
                 num_classes: Optional[int] = None, multi_label: bool = False):
        self.records = list(records)
        self.transform = transform
        self.channels = channels
        self.multi_label = multi_label
        top = max((max(r.labels) for r in self.records if r.labels), default=-1)
        self.num_classes = top + 1 if num_classes is None else int(num_classes)
        if top >= self.num_classes:
            raise DatasetError(f"label {top} found but num_classes is {self.num_classes}")

    def __len__(self) -> int:
        return len(self.records)

    def label(self, index: int):
        labels = self.records[index].labels
        if self.multi_label:
            target = torch.zeros(self.num_classes, dtype=torch.float32)
            target[list(labels)] = 1.0
            return target
        return labels[0] if labels else -1

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            img = load_image(record.path, self.channels)
        except UnreadableImage as exc:
            return SkippedItem(exc.path, exc.reason)
        sample = self.transform(img) if self.transform is not None else img
        return sample, self.label(index), index


def collate_skipping(batch):
    """Collate the readable items; returns ``(samples, labels, indices, skipped)`` where
    ``skipped`` lists ``(path, reason)`` and the first three are None if nothing was read."""
    good = [item for item in batch if not isinstance(item, SkippedItem)]
    skipped = [(item.path, item.reason) for item in batch if isinstance(item, SkippedItem)]
    if not good:
        return None, None, None, skipped
    samples, labels, indices = default_collate(good)
    return samples, labels, indices, skipped


class ShardSampler(Sampler):
    """Per-epoch seeded permutation (seed + epoch), split into disjoint rank shards like
    ``DistributedSampler(drop_last=True)`` and cut to whole batches; ``set_epoch(e, step)``
    starts epoch ``e`` at batch ``step`` (exact resume)."""

    def __init__(self, num_images: int, batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world size {world_size}")
        self.num_images, self.batch_size = num_images, batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = num_images // world_size
        self.steps_per_epoch = self.per_rank // batch_size
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, step: int = 0) -> None:
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step {step} outside epoch of {self.steps_per_epoch} steps")
        self.epoch, self.start_step = int(epoch), int(step)

    def epoch_indices(self, epoch: int) -> List[int]:
        gen = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.num_images, generator=gen).tolist()
        shard = perm[self.rank:self.per_rank * self.world_size:self.world_size]
        return shard[:self.steps_per_epoch * self.batch_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.start_step * self.batch_size:])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size


BACKENDS = ("torchvision", "dali")


def _check_backend(data_cfg: "DataConfig") -> None:
    if data_cfg.backend not in BACKENDS:
        raise HptError(f"data.backend {data_cfg.backend!r} is not one of "
                       f"{', '.join(BACKENDS)}")


def _dali_loaders():
    try:
        from . import dali_loader
    except ImportError as exc:
        raise HptError(f"data.backend 'dali' needs NVIDIA DALI ({exc}); install "
                       "nvidia-dali-cuda130 or use --set data.backend=torchvision") from None
    return dali_loader


def _data_loader(dataset, batch_size, sampler, workers, seed, drop_last) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skipping, drop_last=drop_last,
                      persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
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
    """Infinite iterator of ``(view1, view2)`` batches of shape ``(B, C, S, S)``.

    Epoch ``e`` uses the permutation seeded ``seed + e``; ranks get disjoint shards and the
    same ``steps_per_epoch``. ``epoch`` / ``step`` tell where the next batch comes from.
    """

    def __init__(self, records: Sequence[ImageRecord], aug_cfg: "AugmentConfig",
                 data_cfg: "DataConfig", batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, workers: Optional[int] = None, start_epoch: int = 0,
                 start_step: int = 0, fill_skipped: bool = True):
        _check_backend(data_cfg)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.dataset = ImageDataset(records, build_two_view_transform(aug_cfg, data_cfg),
                                    data_cfg.channels)
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

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        while True:
            self.sampler.set_epoch(self.epoch, self.step)
            for views, _, _, skipped in self._loader:
                self.skipped.add(skipped)
                if skipped and self.fill_skipped:
                    views = self._top_up(views)
                self.step += 1
                if views is not None:
                    yield views[0], views[1]
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
            if self.dataset.records[index].path in self.skipped:
                continue
            item = self.dataset[index]
            if isinstance(item, SkippedItem):
                self.skipped.add([item])
            else:
                extra.append(item)
        if have + len(extra) < self.batch_size:
            raise DatasetError(f"rank {self.sampler.rank} found too few readable images to "
                               "fill a batch; run `hpt data check` on the dataset")
        more = default_collate(extra)[0]
        if views is None:
            return more
        return [torch.cat([views[i], more[i]]) for i in range(2)]


def build_pretrain_loader(records: Sequence[ImageRecord], aug_cfg: "AugmentConfig",
                          data_cfg: "DataConfig", batch_size: int, seed: int, rank: int = 0,
                          world_size: int = 1, workers: Optional[int] = None,
                          start_epoch: int = 0, start_step: int = 0,
                          fill_skipped: bool = True) -> PretrainLoader:
    """The MoCo two-view loader for one rank (see :class:`PretrainLoader`); with
    ``data.backend: dali`` a :class:`~hpt_hpc.data.dali_loader.DaliPretrainLoader`."""
    _check_backend(data_cfg)
    if data_cfg.backend == "dali":
        return _dali_loaders().DaliPretrainLoader(
            records, aug_cfg, data_cfg, batch_size, seed, rank, world_size, workers,
            start_epoch, start_step, fill_skipped)
    return PretrainLoader(records, aug_cfg, data_cfg, batch_size, seed, rank, world_size,
                          workers, start_epoch, start_step, fill_skipped)


class EvalLoader(_WorkerLoader):
    """Finite loader of ``(images, labels)``; each ``iter()`` is one pass over the records.

    Labels are a LongTensor (single-label; ``-1`` for unlabelled) or a float multi-hot
    tensor ``(B, num_classes)``. Unreadable images are dropped and collected in ``skipped``.
    """

    def __init__(self, records: Sequence[ImageRecord], data_cfg: "DataConfig",
                 batch_size: int, train: bool = False, workers: Optional[int] = None,
                 num_classes: Optional[int] = None, multi_label: Optional[bool] = None,
                 seed: int = 0):
        _check_backend(data_cfg)
        records = list(records)
        if not records:
            raise DatasetError("no images to evaluate on")
        if multi_label is None:
            multi_label = any(len(r.labels) > 1 for r in records)
        transform = build_probe_train_transform(data_cfg) if train else \
            build_eval_transform(data_cfg)
        self.dataset = ImageDataset(records, transform, data_cfg.channels, num_classes,
                                    multi_label)
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


def build_eval_loader(records: Sequence[ImageRecord], data_cfg: "DataConfig",
                      batch_size: int, train: bool = False, workers: Optional[int] = None,
                      num_classes: Optional[int] = None, multi_label: Optional[bool] = None,
                      seed: int = 0) -> EvalLoader:
    """Evaluation (``train=False``) or linear-probe training (``train=True``) loader; with
    ``data.backend: dali`` a :class:`~hpt_hpc.data.dali_loader.DaliEvalLoader`."""
    _check_backend(data_cfg)
    if data_cfg.backend == "dali":
        return _dali_loaders().DaliEvalLoader(records, data_cfg, batch_size, train, workers,
                                              num_classes, multi_label, seed)
    return EvalLoader(records, data_cfg, batch_size, train, workers, num_classes,
                      multi_label, seed)
