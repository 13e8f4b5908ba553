"""Backend-neutral dataset pieces shared by the torchvision and DALI loaders.

Unreadable images never crash a run: the dataset returns a :class:`SkippedItem`, the collate
function drops it and hands its path back with the batch, and the main process collects the
paths in a :class:`SkippedImages` (one warning per file). :class:`ShardSampler` decides
which images each rank sees, in which order, for both backends.
"""
from __future__ import annotations

import logging
import signal
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch.utils.data import Dataset, Sampler
from torch.utils.data._utils.collate import default_collate

from .bands import read_image
from .images import UnreadableImage
from .shard_set import ShardTable
from .sources import DatasetError, ImageRecord
from .table import as_table

__all__ = ["ImageDataset", "ShardSampler", "SkippedImages", "SkippedItem", "collate_skipping"]

log = logging.getLogger(__name__)


class SkippedItem(NamedTuple):
    """What the dataset returns instead of a sample for an unreadable image."""

    path: str
    reason: str


class SkippedImages:
    """Unique unreadable images seen by a loader (main process); warns once per file for
    the first :attr:`NAMED`, then once that the rest are counted, not named."""

    NAMED = 20

    def __init__(self):
        self._reasons: Dict[str, str] = {}

    def add(self, items: Sequence[Tuple[str, str]]) -> None:
        for path, reason in items:
            if path not in self._reasons:
                self._reasons[path] = reason
                if len(self._reasons) <= self.NAMED:
                    log.warning("skipping unreadable image %s (%s); `hpt-hpc data check` "
                                "lists all such files", path, reason)
                elif len(self._reasons) == self.NAMED + 1:
                    log.warning("more unreadable images are skipped: counted in "
                                "skipped_images, not named here; `hpt-hpc data check` "
                                "lists them")

    def restore(self, reasons: Dict[str, str]) -> None:
        """Take in the images an earlier run of the stage met (a resume): counted and
        known to be unreadable, not warned about again."""
        for path, reason in reasons.items():
            self._reasons.setdefault(str(path), str(reason))

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
                 num_classes: Optional[int] = None, multi_label: bool = False,
                 max_pixels: Optional[int] = None):
        self.records = as_table(records)  # arrays: forked workers share them, never copy
        self.packed = isinstance(self.records, ShardTable)  # images read from tar shards
        if self.packed:
            self.records.locate()
        self.transform = transform
        self.channels = channels
        self.max_pixels = max_pixels
        self.multi_label = multi_label
        top = self.records.max_label()
        self.num_classes = top + 1 if num_classes is None else int(num_classes)
        if top >= self.num_classes:
            raise DatasetError(f"label {top} found but num_classes is {self.num_classes}")

    def __len__(self) -> int:
        return len(self.records)

    def label(self, index: int):
        labels = self.records.labels_of(index)
        if self.multi_label:
            target = torch.zeros(self.num_classes, dtype=torch.float32)
            target[list(labels)] = 1.0
            return target
        return labels[0] if labels else -1

    def __getitem__(self, index: int):
        path = self.records.path(index)
        try:
            data = self.records.read_bytes(index) if self.packed else None
            img = read_image(path, self.channels, self.max_pixels, data=data)
        except UnreadableImage as exc:
            return SkippedItem(exc.path, exc.reason)
        except OSError as exc:  # a damaged shard
            return SkippedItem(path, f"{type(exc).__name__}: {exc}")
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


JOB_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGUSR2")  # what a scheduler sends every process


def ignore_job_signals(_worker_id: int = 0) -> None:
    """A loader worker's ``worker_init_fn``: it ignores the scheduler's SIGTERM (SLURM
    sends it to every process of a job it preempts or requeues) and SIGUSR1/2. The main
    process decides: it checkpoints at the next step boundary, then ends its workers.
    Without this the workers die at once and the stage fails before it can checkpoint."""
    for name in JOB_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_IGN)

