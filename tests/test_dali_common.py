"""Real test images and view statistics shared by the DALI tests (no tests here).

``HPT_DALI_TEST_DEVICE`` (cpu | gpu | auto, default cpu) picks the DALI operators the tests
run, so the same statistics check the GPU pipeline on a GPU machine;
``HPT_DALI_TEST_SEED`` (default 0) changes every random draw, to check the tolerances.
"""
import os
from pathlib import Path

import numpy as np
from PIL import Image

from hpt_hpc.config import AugmentConfig, DataConfig, DatasetConfig
from hpt_hpc.data import ImageRecord, build_pretrain_loader, list_split

DEVICE = os.environ.get("HPT_DALI_TEST_DEVICE", "cpu")
SEED = int(os.environ.get("HPT_DALI_TEST_SEED", "0"))  # vary to check the tolerances
MEAN, STD = 0.5, 0.25  # normalisation of the colour tests (easy to undo)


def grey_sources(tree: Path, count: int, split: str = "train") -> list:
    """``count`` real grey images (paths) from a prepared dataset tree, classes mixed."""
    records, _ = list_split(DatasetConfig(path=str(tree)), split)
    step = max(1, len(records) // count)
    return [r.path for r in records[::step][:count]]


def colour_jpegs(folder: Path, tree: Path, count: int, side: int = 64) -> list:
    """RGB JPEGs: three real Fashion-MNIST images (bicubic-upscaled) as R, G and B."""
    folder.mkdir(parents=True, exist_ok=True)
    greys = grey_sources(tree, 3 * count)
    out = []
    for i in range(count):
        planes = [Image.open(p).convert("L").resize((side, side), Image.BICUBIC)
                  for p in greys[3 * i:3 * i + 3]]
        path = folder / f"colour{i:03d}.jpg"
        Image.merge("RGB", planes).save(path, quality=92)
        out.append(ImageRecord(str(path), (i % 10,)))
    return out


def tagged_pngs(folder: Path, tree: Path, count: int, side: int = 96) -> list:
    """Lossless RGB PNGs whose R and G channels are x and y ramps (0..255 across the image)
    and whose B channel is a real image: a view's R/G values tell where it was cut from."""
    folder.mkdir(parents=True, exist_ok=True)
    ramp = np.rint(np.linspace(0, 255, side)).astype(np.uint8)
    out = []
    for i, src in enumerate(grey_sources(tree, count)):
        blue = np.asarray(Image.open(src).convert("L").resize((side, side), Image.BICUBIC))
        rgb = np.stack([np.broadcast_to(ramp[None, :], (side, side)),
                        np.broadcast_to(ramp[:, None], (side, side)), blue], axis=-1)
        path = folder / f"tagged{i:03d}.png"
        Image.fromarray(rgb).save(path)
        out.append(ImageRecord(str(path), (0,)))
    return out


def only(**enabled) -> AugmentConfig:
    """An augmentation config with only the named parts enabled (values: dicts of overrides)."""
    aug = AugmentConfig()
    for name in ("crop", "color_jitter", "grayscale", "blur", "flip"):
        part = getattr(aug, name)
        part.enabled = name in enabled
        for key, value in (enabled.get(name) or {}).items():
            setattr(part, key, value)
    return aug


def data_config(backend: str, size: int, channels: int = 3, **extra) -> DataConfig:
    return DataConfig(backend=backend, device=DEVICE, image_size=size, channels=channels,
                      mean=[MEAN] * channels, std=[STD] * channels,
                      workers=1 if backend == "dali" else 0, **extra)


def views(records, aug, backend: str, size: int, count: int, seed: int = SEED,
          batch: int = 16, spec_changes=None) -> np.ndarray:
    """``count`` first views (N, C, S, S) in 0..255 grey levels from a pretraining loader;
    ``spec_changes`` alters the DALI view spec (to show what a broken pipeline gives)."""
    import dataclasses
    import torch
    torch.manual_seed(seed)  # torchvision's augmentations draw from torch's global RNG
    loader = build_pretrain_loader(records, aug, data_config(backend, size), batch, seed)
    if spec_changes:
        loader.spec = dataclasses.replace(loader.spec, **spec_changes)
    out, stream = [], iter(loader)
    while sum(len(v) for v in out) < count:
        out.append(next(stream)[0].cpu().numpy())
    loader.close()
    return np.concatenate(out)[:count] * (STD * 255) + MEAN * 255


def luma(v: np.ndarray) -> np.ndarray:
    return 0.299 * v[:, 0] + 0.587 * v[:, 1] + 0.114 * v[:, 2]


def chroma(v: np.ndarray):
    """YIQ chroma planes (I, Q) of RGB views (N, 3, S, S)."""
    r, g, b = v[:, 0], v[:, 1], v[:, 2]
    return 0.596 * r - 0.274 * g - 0.322 * b, 0.211 * r - 0.523 * g + 0.312 * b


def crop_boxes(v: np.ndarray, side: int):
    """(area fraction, aspect w/h, flipped) of views of :func:`tagged_pngs` images."""
    size = v.shape[-1]
    red, green = v[:, 0], v[:, 1]
    span_x = (red[:, :, -1].mean(1) - red[:, :, 0].mean(1)) / 255 * (side - 1)
    span_y = (green[:, -1, :].mean(1) - green[:, 0, :].mean(1)) / 255 * (side - 1)
    width, height = np.abs(span_x) / (1 - 1 / size), span_y / (1 - 1 / size)
    return width * height / side ** 2, width / height, span_x < 0


def sharpness(v: np.ndarray) -> np.ndarray:
    """Mean absolute 4-neighbour Laplacian of each view's luma (blur lowers it)."""
    y = luma(v) if v.shape[1] == 3 else v[:, 0]
    lap = 4 * y[:, 1:-1, 1:-1] - y[:, :-2, 1:-1] - y[:, 2:, 1:-1] - y[:, 1:-1, :-2] - \
        y[:, 1:-1, 2:]
    return np.abs(lap).mean(axis=(1, 2))


def quantiles(x, qs=(0.1, 0.5, 0.9)) -> np.ndarray:
    return np.quantile(np.asarray(x), qs)
