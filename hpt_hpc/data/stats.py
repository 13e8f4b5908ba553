"""Per-channel mean and standard deviation of a dataset's images (``hpt-hpc data stats``),
the values ``data.mean`` / ``data.std`` normalise with: pixels scaled to [0, 1] after the
same conversion training applies (``data.channels``), accumulated in float64 one image at
a time (memory: one image). Unreadable files are skipped and counted; without a readable
image there is no statistic (:class:`DatasetError`)."""
from __future__ import annotations

import random
from typing import Dict, Optional, Sequence

import numpy as np

from .bands import read_image
from .images import UnreadableImage
from .shard_set import ShardTable
from .sources import DatasetError, ImageRecord, scan_split

STATS_SEED = 0  # the sample of --max-images is drawn with this seed


def channel_stats(records: "Sequence[ImageRecord]", channels: int,
                  max_images: Optional[int] = None,
                  max_pixels: Optional[int] = None) -> Dict[str, object]:
    """``{"mean": [...], "std": [...], "images": n, "pixels": n, "skipped": n}`` over
    ``records`` (a seeded sample of ``max_images`` of them when given)."""
    picked = range(len(records))
    if max_images is not None and len(records) > max_images:
        picked = random.Random(STATS_SEED).sample(range(len(records)), max_images)
    total = np.zeros(channels)
    squares = np.zeros(channels)
    pixels, images, skipped, first = 0, 0, 0, None
    for i in picked:
        try:
            data = records.read_bytes(i) if isinstance(records, ShardTable) else None
            img = read_image(records[i].path, channels, max_pixels, data=data)
        except (UnreadableImage, OSError) as exc:
            exc = exc if isinstance(exc, UnreadableImage) else \
                UnreadableImage(records[i].path, f"{type(exc).__name__}: {exc}")
            skipped += 1
            first = first or f"{exc.path}: {exc.reason}"
            continue
        if channels not in (1, 3):  # bands (C, H, W), already scaled
            values = img.double().reshape(channels, -1).T.numpy()
        else:
            values = np.asarray(img, dtype=np.float64).reshape(-1, channels) / 255.0
        total += values.sum(0)
        squares += np.square(values).sum(0)
        pixels += values.shape[0]
        images += 1
    if not images:
        raise DatasetError(f"no readable image to compute statistics from ({skipped} "
                           f"unreadable" + (f", first {first}" if first else "") +
                           "); `hpt-hpc data check` names every unreadable file")
    mean = total / pixels
    std = np.sqrt(np.maximum(squares / pixels - np.square(mean), 0.0))
    return {"mean": [round(float(m), 4) for m in mean], "std": [round(float(s), 4) for s in std],
            "images": images, "pixels": int(pixels), "skipped": skipped}


def dataset_stats(ds_cfg, split: str, channels: int, max_images: Optional[int] = None,
                  max_pixels: Optional[int] = None) -> Dict[str, object]:
    """:func:`channel_stats` of one split of a dataset config (any format)."""
    return channel_stats(scan_split(ds_cfg, split).records, channels, max_images, max_pixels)
