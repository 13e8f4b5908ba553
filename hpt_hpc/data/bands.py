"""Multi-band images (``data.channels`` other than 1 or 3: satellite bands, RGB + infrared,
stacked microscopy channels) as float tensors ``(C, H, W)``.

TIFF files are read with ``tifffile`` (any number of samples per pixel, contiguous or
planar, or one band per page); other formats with PIL (``RGBA``/``CMYK`` are 4 bands, a
multi-frame file has one band per frame). Values are scaled by their type's range (uint8
/ 255, uint16 / 65535, other integers by their maximum; floats as stored), so
``data.mean``/``data.std`` (``hpt-hpc data stats``) are in the same units. The number of
bands must equal ``data.channels``: anything else, or a float image with NaN or infinite
values, is an unreadable image, named and skipped like a broken file.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional

import numpy as np
from PIL import Image

from .images import NON_FINITE, UnreadableImage, check_file, load_image, opened, refuse_large

if TYPE_CHECKING:  # pragma: no cover
    import torch

TIFF_EXTENSIONS = (".tif", ".tiff")


def _itemsize(dtype) -> int:
    return np.dtype(dtype).itemsize if dtype is not None else 1


def _tiff(path: str, max_pixels: Optional[int], data: Optional[bytes] = None) -> np.ndarray:
    import tifffile
    with tifffile.TiffFile(opened(path, data)) as tif:
        series = tif.series[0]
        shape, axes = series.shape, series.axes
        by_page = len(shape) == 2 and len(tif.pages) > 1  # one band per page
        if max_pixels:  # every page read, before any is decoded
            parts = tif.pages if by_page else [series]
            size = sum(int(np.prod(p.shape)) * _itemsize(p.dtype) for p in parts)
            refuse_large(path, size, max_pixels, f"{len(tif.pages)} page(s) of shape "
                                                 f"{tuple(shape)} ({axes})")
        if by_page:
            arr = tif.asarray(key=slice(None))
            return arr if arr.ndim == 3 else arr.reshape(-1, *shape)
        arr = series.asarray()
    if arr.ndim == 3 and axes[-1] in "SC" and axes[0] == "Y":
        arr = np.moveaxis(arr, -1, 0)  # Y X S -> S Y X
    return arr


def _pil(path: str, max_pixels: Optional[int], data: Optional[bytes] = None) -> np.ndarray:
    check_file(path, max_pixels, all_frames=True, data=data)
    with Image.open(opened(path, data)) as img:
        frames = getattr(img, "n_frames", 1)
        if frames > 1:
            planes = []
            for i in range(frames):
                img.seek(i)
                planes.append(np.asarray(img))
            return np.stack(planes)
        img.load()
        arr = np.asarray(img)
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _scaled(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        top = 255 if arr.dtype == np.uint8 else np.iinfo(arr.dtype).max
        return arr.astype(np.float32) / np.float32(top)
    return arr.astype(np.float32)


def load_bands(path: str, channels: int, max_pixels: Optional[int] = None,
               data: Optional[bytes] = None) -> "torch.Tensor":
    """Decode ``path`` (or its bytes ``data``, read from a shard) into a float32 tensor
    ``(channels, H, W)`` (see module doc; torch is imported here, so ``data check`` of
    grey/RGB data stays torch-free)."""
    import torch
    check_file(path, data=data)  # a regular file, before anything opens it
    try:
        if os.path.splitext(path)[1].lower() in TIFF_EXTENSIONS:
            arr = _tiff(path, max_pixels, data)
        else:
            arr = _pil(path, max_pixels, data)
    except UnreadableImage:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile/PIL signal corrupt data many ways
        raise UnreadableImage(str(path), f"{type(exc).__name__}: {exc}") from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != channels:
        raise UnreadableImage(str(path), f"{arr.shape[0] if arr.ndim == 3 else '?'} bands "
                                         f"(shape {tuple(arr.shape)}), data.channels is "
                                         f"{channels}")
    if arr.dtype.kind in "fc" and not np.isfinite(arr).all():
        raise UnreadableImage(str(path), NON_FINITE)
    return torch.from_numpy(np.ascontiguousarray(_scaled(arr)))


def read_image(path: str, channels: int, max_pixels: Optional[int] = None,
               data: Optional[bytes] = None):
    """The decoded image the transforms take: a PIL ``L``/``RGB`` image for 1 or 3
    channels (:func:`~hpt_hpc.data.images.load_image`), else a band tensor. ``data``: the
    image's bytes when they come from a shard (``path`` then names it, extension kept)."""
    if channels in (1, 3):
        return load_image(path, channels, max_pixels, data)
    return load_bands(path, channels, max_pixels, data)
