"""A dataset's train/val/test records, their label space and in-process image batches
(torchvision; the protocols run in-process). The transforms come from
:mod:`hpt_hpc.data.transforms` (``build_eval_transform`` / ``build_probe_train_transform``).

Labels: a split is *multi-label* when any training record has a number of labels other
than one (file lists allow several labels, or none, per image); then every split yields
multi-hot targets of the same width and the protocols score mean per-class AUROC.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from ..config import DatasetConfig, ExperimentConfig
from ..data import list_split
from ..data.dataset import ImageDataset, SkippedImages, collate_skipping, ignore_job_signals
from ..data.sources import ImageRecord
from ..data.table import RecordTable
from ..errors import HptError
from .finetune import per_class_budget

SPLITS = ("train", "val", "test")


@dataclass
class SplitRecords:
    """Records of every split with the label space shared by them."""

    records: Dict[str, List[ImageRecord]]
    num_classes: int
    multi_label: bool


def label_space(train: Sequence[ImageRecord], *others: Sequence[ImageRecord]):
    """``(num_classes, multi_label)`` of a dataset from its records (see module doc)."""
    multi_label = any(len(r.labels) != 1 for r in train)
    top = max((max(r.labels) for recs in (train, *others) for r in recs if r.labels),
              default=-1)
    if top < 0:
        raise HptError("the dataset has no labels; evaluation needs labelled train, val "
                       "and test splits")
    return top + 1, multi_label


def dataset_config(cfg: ExperimentConfig, dataset: str) -> DatasetConfig:
    """The settings of ``dataset`` with every image of a split (``max_images`` ignored)."""
    if dataset not in cfg.datasets:
        raise HptError(f"dataset '{dataset}' is not defined in the config (defined: "
                       f"{', '.join(sorted(cfg.datasets)) or 'none'})")
    return dataclasses.replace(cfg.datasets[dataset], max_images=None)


def listed_split(cfg: ExperimentConfig, dataset: str, split: str) -> RecordTable:
    """Every record of ``split`` in any format, labelled or not (``max_images`` ignored)."""
    return list_split(dataset_config(cfg, dataset), split)[0]


def split_records(cfg: ExperimentConfig, dataset: str, split: str) -> List[ImageRecord]:
    """Every record of ``split`` of a labelled dataset (``max_images`` ignored;
    ``probe.max_train_images`` keeps the first N training records,
    ``probe.labels_per_class`` a seeded N per class)."""
    if dataset in cfg.datasets and cfg.datasets[dataset].format == "folder":
        raise HptError(f"dataset '{dataset}' is a folder of unlabelled images (format: "
                       f"folder), good for pretraining only; evaluations need labelled "
                       f"train/val/test splits (format imagefolder or filelist)")
    records = listed_split(cfg, dataset, split)
    if split == "train" and cfg.probe.max_train_images:
        records = records.take(range(min(len(records), cfg.probe.max_train_images)))
    if split == "train" and cfg.probe.labels_per_class:
        records = per_class_budget(records, cfg.probe.labels_per_class, cfg.seed)
    return records


def load_splits(cfg: ExperimentConfig, dataset: str) -> SplitRecords:
    """Records of train/val/test and their label space."""
    records = {split: split_records(cfg, dataset, split) for split in SPLITS}
    classes, multi = label_space(records["train"], records["val"], records["test"])
    return SplitRecords(records, classes, multi)


class _Batches:
    """``(images, targets)`` batches of a DataLoader, dropping unreadable images; with
    ``endless`` the loader is restarted (fresh shuffle) whenever it runs out, so a batch
    lost to unreadable images never ends a training run early."""

    def __init__(self, loader: DataLoader, endless: bool = False):
        self.loader, self.endless = loader, endless
        self.skipped = SkippedImages()

    def __iter__(self):
        while True:
            for images, labels, _, skipped in self.loader:
                self.skipped.add(skipped)
                if images is not None:
                    yield images, labels
            if not self.endless:
                return

    def __len__(self) -> int:
        return len(self.loader)


def kept_paths(records: Sequence[ImageRecord], batches) -> List[str]:
    """The paths a pass of ``batches`` (a loader with ``skipped``) delivered, in order."""
    skipped = getattr(batches, "skipped", ())
    return [r.path for r in records if r.path not in skipped]


class _ResumedSampler(RandomSampler):
    """:class:`RandomSampler` whose first pass drops the first ``skip`` indices: the rest
    of a seeded stream, for an evaluation resumed after ``skip / batch`` batches."""

    def __init__(self, data_source, num_samples: int, generator, skip: int):
        super().__init__(data_source, num_samples=num_samples, generator=generator)
        self.skip = skip

    def __iter__(self):
        order = list(super().__iter__())
        skip, self.skip = self.skip, 0
        return iter(order[skip:])


def image_batches(cfg: ExperimentConfig, records: Sequence[ImageRecord], space: SplitRecords,
                  transform, batch_size: int, steps: Optional[int] = None,
                  seed: int = 0, start: int = 0) -> _Batches:
    """One ordered pass over ``records`` or, with ``steps``, an endless stream of shuffled
    batches (epoch after epoch, seeded) of ``min(batch_size, len(records))`` images, drawn
    ``steps`` batches at a time; ``start`` skips the stream's first batches (resuming)."""
    dataset = ImageDataset(records, transform, cfg.data.channels, space.num_classes,
                           space.multi_label, cfg.data.max_pixels)
    batch = min(int(batch_size), len(dataset))
    if steps is None:
        sampler = SequentialSampler(dataset)
    else:
        sampler = _ResumedSampler(dataset, steps * batch, torch.Generator().manual_seed(seed),
                                  skip=start * batch)
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler,
                        num_workers=cfg.data.workers, collate_fn=collate_skipping,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_job_signals,
                        generator=torch.Generator().manual_seed(seed))
    return _Batches(loader, endless=steps is not None)
