"""Decode an image file fully and convert it to grey (``L``) or ``RGB`` (PIL + numpy only).

Conversion rules:

* transparency (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) is composited
  onto a **white** background, the way such images look on a web page (dropping the alpha
  channel instead would expose arbitrary colours under transparent pixels);
* 16-bit grey (``I;16*``) is scaled to 8 bits (``v / 257``); 32-bit integer images are
  treated as 16-bit when their maximum exceeds 255; float images in ``[0, 1]`` are scaled
  by 255, others clipped to ``[0, 255]``; a float image with NaN or infinite pixels is
  unreadable (no number would be right);
* ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, palette and bilevel images use PIL's conversions;
  colour to grey is PIL's ITU-R 601-2 luma.
"""
from __future__ import annotations

import io
import os
import stat
from typing import Optional

import numpy as np
from PIL import Image

_GREY_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
_BACKGROUND = 255  # white


class UnreadableImage(Exception):
    """An image file that cannot be decoded (missing, empty, truncated or not an image)."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path!r}: {reason}")
        self.path = path
        self.reason = reason


NON_FINITE = "non-finite pixel values (NaN or infinity)"


class NonFinitePixels(ValueError):
    """A float image with NaN or infinite pixels."""


def _to_8bit_grey(img: Image.Image) -> Image.Image:
    """16-bit and integer images to 8 bits in integer arithmetic (``round(x / 257)``:
    65535 -> 255; a 9400² 16-bit image needs 0.5 GB, not the 2 GB of float64 copies)."""
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise NonFinitePixels(NON_FINITE)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * np.float32(255.0)
        return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    arr = np.asarray(img)
    if img.mode.startswith("I;16") or (arr.size and arr.max() > 255):
        wide = np.clip(arr, 0, 65535).astype(np.uint32)
        wide += 128
        wide //= 257
        return Image.fromarray(wide.astype(np.uint8), mode="L")
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")


def decoded_bytes(img: Image.Image, frames: int = 1) -> int:
    """What ``frames`` frames of ``img`` decode to, from its header: width x height x
    bands x bytes per sample (``data.max_pixels`` counts this)."""
    mode = img.mode
    per_sample = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") else 1
    return img.width * img.height * len(img.getbands()) * per_sample * frames


def refuse_large(path: str, size: int, max_pixels: Optional[int], what: str) -> None:
    """Raise :class:`UnreadableImage` when ``size`` decoded bytes exceed ``max_pixels``."""
    if max_pixels and size > max_pixels:
        raise UnreadableImage(str(path), f"{what}: {size} bytes of decoded pixels exceed "
                                         f"data.max_pixels ({max_pixels}); raise it to "
                                         "read this image")


def opened(path: str, data: Optional[bytes]):
    """What to open: the file ``path``, or ``data`` (an image read from a shard) in memory."""
    return path if data is None else io.BytesIO(data)


def check_file(path: str, max_pixels: Optional[int] = None, all_frames: bool = False,
               data: Optional[bytes] = None) -> None:
    """Refuse what must not be opened: anything but a regular file (a FIFO would block
    the reader forever; sockets, devices) and, after reading only the header, images that
    decode to more than ``max_pixels`` bytes (``data.max_pixels``: decoding bombs; the
    first frame, or every frame with ``all_frames``). ``data``: the image's bytes, already
    read (from a shard; ``path`` names it)."""
    try:
        mode = os.stat(path).st_mode if data is None else stat.S_IFREG
    except OSError as exc:
        raise UnreadableImage(str(path), f"{type(exc).__name__}: {exc}") from None
    if not stat.S_ISREG(mode):
        raise UnreadableImage(str(path), "not a regular file (a FIFO, socket or device)")
    if max_pixels:
        try:
            with Image.open(opened(path, data)) as img:
                frames = getattr(img, "n_frames", 1) if all_frames else 1
                size, what = decoded_bytes(img, frames), f"{img.width}x{img.height} {img.mode}"
        except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError,
                EOFError) as exc:
            raise UnreadableImage(str(path), f"{type(exc).__name__}: {exc}") from None
        refuse_large(path, size, max_pixels, what + (f" x {frames} frames" * (frames > 1)))


def _flatten_alpha(img: Image.Image) -> Image.Image:
    """Composite an image with alpha onto the white background (returns L or RGB)."""
    if img.mode in ("LA", "La"):
        img = img.convert("LA") if img.mode != "LA" else img
        base = Image.new("L", img.size, _BACKGROUND)
        base.paste(img.getchannel("L"), mask=img.getchannel("A"))
        return base
    rgba = img if img.mode == "RGBA" else img.convert("RGBA")  # no copy: memory
    base = Image.new("RGB", img.size, (_BACKGROUND,) * 3)
    base.paste(rgba.convert("RGB"), mask=rgba.getchannel("A"))
    return base


def _convert(img: Image.Image, channels: int) -> Image.Image:
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    elif img.mode in ("L", "1") and "transparency" in img.info:
        img = img.convert("LA")
    elif img.mode == "RGB" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA"):
        img = _flatten_alpha(img)
    elif img.mode in _GREY_HIGH_DEPTH:
        img = _to_8bit_grey(img)
    target = "L" if channels == 1 else "RGB"
    return img if img.mode == target else img.convert(target)


def convert_image(img: Image.Image, channels: int) -> Image.Image:
    """An image already in memory converted as :func:`load_image` converts a file's."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    return _convert(img, channels)


def load_image(path: str, channels: int = 3, max_pixels: Optional[int] = None,
               data: Optional[bytes] = None) -> Image.Image:
    """Fully decode ``path`` (or its bytes ``data``) and return an ``L`` (channels=1) or
    ``RGB`` (channels=3) image.

    Raises :class:`UnreadableImage` (naming the file) for anything that fails to decode,
    that is not a regular file, or that has more than ``max_pixels`` pixels.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    check_file(path, max_pixels, data=data)
    try:
        with Image.open(opened(path, data)) as img:
            img.load()
            out = _convert(img, channels)
            if out is img:
                out = img.copy()
    except NonFinitePixels as exc:
        raise UnreadableImage(str(path), str(exc)) from None
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError,
            EOFError, MemoryError) as exc:  # PIL signals corrupt data with all of these
        raise UnreadableImage(str(path), f"{type(exc).__name__}: {exc}") from None
    return out
