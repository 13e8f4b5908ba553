"""A dataset's train/val/test records, their label space and the evaluation transforms
and loaders (torchvision; the protocols run in-process).

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

from ..config import ExperimentConfig
from ..data.sources import ImageRecord
from ..errors import HptError

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


def split_records(cfg: ExperimentConfig, dataset: str, split: str) -> List[ImageRecord]:
    """Every record of ``split`` (``max_images`` ignored; ``probe.max_train_images``
    keeps the first N training records)."""
    from ..data import list_split
    if dataset not in cfg.datasets:
        raise HptError(f"dataset '{dataset}' is not defined in the config (defined: "
                       f"{', '.join(sorted(cfg.datasets)) or 'none'})")
    ds_cfg = dataclasses.replace(cfg.datasets[dataset], max_images=None)
    records, _ = list_split(ds_cfg, split)
    if split == "train" and cfg.probe.max_train_images:
        records = records[:cfg.probe.max_train_images]
    return records


def load_splits(cfg: ExperimentConfig, dataset: str) -> SplitRecords:
    """Records of train/val/test and their label space."""
    records = {split: split_records(cfg, dataset, split) for split in SPLITS}
    classes, multi = label_space(records["train"], records["val"], records["test"])
    return SplitRecords(records, classes, multi)


def train_transform(cfg: ExperimentConfig, augment: bool = True):
    """Training images: random-resized-crop (scale ``probe.crop_scale``) and, when
    ``probe.flip``, a random horizontal flip; centre crop when ``augment`` is off."""
    from torchvision import transforms as T

    from ..data.transforms import ToNormalizedTensor, normalisation
    if not augment:
        return center_crop_transform(cfg)
    scale = tuple(float(s) for s in cfg.probe.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise HptError(f"probe.crop_scale must be [low, high] with 0 < low <= high <= 1, "
                       f"got {list(cfg.probe.crop_scale)}")
    steps = [T.RandomResizedCrop(int(cfg.data.image_size), scale=scale)]
    if cfg.probe.flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [ToNormalizedTensor(*normalisation(cfg.data))])


def center_crop_transform(cfg: ExperimentConfig):
    """Val/test images: resize the short side to ``round(size / probe.center_crop_ratio)``
    and centre-crop ``data.image_size``."""
    from torchvision import transforms as T

    from ..data.transforms import ToNormalizedTensor, normalisation
    ratio = float(cfg.probe.center_crop_ratio)
    if not 0 < ratio <= 1:
        raise HptError(f"probe.center_crop_ratio must be in (0, 1], got {ratio}")
    size = int(cfg.data.image_size)
    return T.Compose([T.Resize(int(round(size / ratio))), T.CenterCrop(size),
                      ToNormalizedTensor(*normalisation(cfg.data))])


class _Batches:
    """``(images, targets)`` batches of a DataLoader, dropping unreadable images; with
    ``endless`` the loader is restarted (fresh shuffle) whenever it runs out, so a batch
    lost to unreadable images never ends a training run early."""

    def __init__(self, loader: DataLoader, endless: bool = False):
        self.loader, self.endless = loader, endless

    def __iter__(self):
        while True:
            for images, labels, _, _ in self.loader:
                if images is not None:
                    yield images, labels
            if not self.endless:
                return

    def __len__(self) -> int:
        return len(self.loader)


def image_batches(cfg: ExperimentConfig, records: Sequence[ImageRecord], space: SplitRecords,
                  transform, batch_size: int, steps: Optional[int] = None,
                  seed: int = 0) -> _Batches:
    """One ordered pass over ``records`` or, with ``steps``, an endless stream of shuffled
    batches (epoch after epoch, seeded) of ``min(batch_size, len(records))`` images, drawn
    ``steps`` batches at a time."""
    from ..data.loader import ImageDataset, collate_skipping
    dataset = ImageDataset(records, transform, cfg.data.channels, space.num_classes,
                           space.multi_label)
    batch = min(int(batch_size), len(dataset))
    if steps is None:
        sampler = SequentialSampler(dataset)
    else:
        sampler = RandomSampler(dataset, num_samples=steps * batch,
                                generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(dataset, batch_size=batch, sampler=sampler,
                        num_workers=cfg.data.workers, collate_fn=collate_skipping,
                        pin_memory=torch.cuda.is_available(),
                        generator=torch.Generator().manual_seed(seed))
    return _Batches(loader, endless=steps is not None)
