"""Encoded images for the DALI backend: read, screen and batch files (numpy + PIL; no DALI).

DALI's decoder stops the whole pipeline on one broken file, and decodes some images unlike
the torchvision reference (alpha dropped instead of composited on white; no GIF). So every
file is screened in Python, from a few header/trailer bytes, before DALI sees it:

* **direct** (nearly all files): a complete baseline/progressive 8-bit JPEG with 1 or 3
  components (SOI ... EOI), or a complete 8-bit grey/RGB PNG without transparency. Its bytes
  go to DALI's decoder unchanged;
* **everything else** (empty, truncated, not an image, CMYK, alpha/palette PNG, GIF, BMP,
  TIFF, WebP): decoded by the reference :func:`~hpt_hpc.data.images.load_image`. Unreadable
  files are skipped, named in a warning and counted; readable ones reach DALI as an
  uncompressed PNM of the converted pixels, so both backends see the same pixels.

A file that passes screening and still fails in DALI is *quarantined* by the loader: it is
decoded by the reference decoder from then on (skipped if that fails too).
"""
from __future__ import annotations

import os
from collections import deque
from typing import Deque, List, NamedTuple, Optional, Sequence, Set

import numpy as np

from .images import UnreadableImage, check_file, load_image
from .sources import DatasetError

JPEG_SOI, JPEG_EOI = b"\xff\xd8\xff", b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_SOF_MARKERS = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame, not DHT/DAC


def _jpeg_is_direct(data: bytes) -> bool:
    """Complete 8-bit JPEG with 1 or 3 components and a known size."""
    if not data.startswith(JPEG_SOI) or \
            not data[-64:].rstrip(b"\x00\r\n ").endswith(JPEG_EOI):
        return False
    i, n = 2, len(data)
    while i + 10 <= n:
        if data[i] != 0xFF:
            return False
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in _SOF_MARKERS:
            precision, height = data[i + 4], int.from_bytes(data[i + 5:i + 7], "big")
            width, components = int.from_bytes(data[i + 7:i + 9], "big"), data[i + 9]
            return precision == 8 and height > 0 and width > 0 and components in (1, 3)
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def _png_is_direct(data: bytes) -> bool:
    """Complete 8-bit grey or RGB PNG without a transparency chunk."""
    if not data.startswith(PNG_SIGNATURE) or not data.endswith(PNG_IEND) or len(data) < 33:
        return False
    if data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in (0, 2):
        return False
    i, n = 8, len(data)
    while i + 8 <= n:
        kind = data[i + 4:i + 8]
        if kind == b"IDAT":
            return True
        if kind == b"tRNS":
            return False
        i += 12 + int.from_bytes(data[i:i + 4], "big")
    return False


def is_direct(data: bytes) -> bool:
    """True when DALI can decode ``data`` itself exactly as the reference decoder would."""
    return _jpeg_is_direct(data) or _png_is_direct(data)


HEAD_BYTES = 1 << 20  # the markers/chunks that decide sit at the start of a file


def is_direct_file(path: str) -> bool:
    """:func:`is_direct` of a file from its first MiB and last bytes (bounded memory)."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
        if len(head) < HEAD_BYTES:
            return is_direct(head)
        handle.seek(-64, os.SEEK_END)
        return is_direct(head + handle.read())


def pnm_bytes(img) -> np.ndarray:
    """An ``L``/``RGB`` PIL image as uncompressed PGM/PPM bytes (which DALI decodes)."""
    arr = np.asarray(img, dtype=np.uint8)
    magic = b"P5" if arr.ndim == 2 else b"P6"
    header = b"%s\n%d %d\n255\n" % (magic, arr.shape[1], arr.shape[0])
    return np.frombuffer(header + arr.tobytes(), dtype=np.uint8)


class FileReader:
    """Reads ``paths[i]`` for DALI: encoded bytes, converted PNM bytes, or None (skipped).

    ``skipped`` is the loader's :class:`~hpt_hpc.data.dataset.SkippedImages` (it warns once
    per file); ``converted`` counts images that went through the reference decoder.
    """

    def __init__(self, paths: Sequence[str], channels: int, skipped,
                 max_pixels: Optional[int] = None):
        self.paths, self.channels, self.skipped = paths, int(channels), skipped
        self.max_pixels = max_pixels
        self.quarantined: Set[int] = set()
        self.converted = 0

    def read(self, index: int) -> Optional[np.ndarray]:
        path = self.paths[index]
        if path in self.skipped:
            return None
        try:  # regular files within data.max_pixels only, read from the header
            check_file(path, self.max_pixels)
        except UnreadableImage as exc:
            self.skipped.add([(path, exc.reason)])
            return None
        if index not in self.quarantined:
            try:
                with open(path, "rb") as handle:
                    data = handle.read()
            except OSError as exc:
                self.skipped.add([(path, f"{type(exc).__name__}: {exc}")])
                return None
            if is_direct(data):
                return np.frombuffer(data, dtype=np.uint8)
        try:
            img = load_image(path, self.channels)
        except UnreadableImage as exc:
            self.skipped.add([(path, exc.reason)])
            return None
        self.converted += 1
        return pnm_bytes(img)

    def quarantine(self, indices) -> int:
        """Route these images through the reference decoder; returns how many are new."""
        new = set(indices) - self.quarantined
        self.quarantined |= new
        return len(new)


class FedBatch(NamedTuple):
    """One batch handed to DALI: where it sits in the stream and which images it holds."""

    epoch: int
    step: int
    indices: List[int]


def _meta(indices: Sequence[int], epoch: int, step: int) -> List[np.ndarray]:
    return [np.array([i, epoch, step], dtype=np.int64) for i in indices]


class PretrainFeed:
    """DALI source of one rank's pretraining batches, from ``(epoch, step)`` on, forever.

    Batch ``step`` of epoch ``e`` holds the sampler's indices for that step; unreadable
    images are replaced (``fill``) by the readable ones that follow in the rank's epoch
    order, as the torchvision loader does, so every step has ``batch_size`` images. Without
    ``fill`` a batch shrinks, and a step with no readable image is left out.
    Each sample's meta output is ``[index, epoch, step]``.
    """

    def __init__(self, reader: FileReader, sampler, fill: bool, epoch: int, step: int):
        self.reader, self.sampler, self.fill = reader, sampler, fill
        self.epoch, self.step = int(epoch), int(step)
        self.in_flight: Deque[FedBatch] = deque()
        self.error: Optional[BaseException] = None
        self._order_epoch, self._order = None, []

    def order(self, epoch: int) -> List[int]:
        if self._order_epoch != epoch:
            self._order_epoch, self._order = epoch, self.sampler.epoch_indices(epoch)
        return self._order

    def __call__(self):
        try:
            while True:
                epoch, step = self.epoch, self.step
                self.step += 1
                if self.step == self.sampler.steps_per_epoch:
                    self.epoch, self.step = self.epoch + 1, 0
                indices, arrays = self._batch(epoch, step)
                if indices:
                    break
        except Exception as exc:  # kept for the loader: DALI re-raises it wrapped
            self.error = exc
            raise
        self.in_flight.append(FedBatch(epoch, step, indices))
        return arrays, _meta(indices, epoch, step)

    def _batch(self, epoch: int, step: int):
        order, size = self.order(epoch), self.sampler.batch_size
        indices, arrays = [], []
        for index in order[step * size:(step + 1) * size]:
            data = self.reader.read(index)
            if data is not None:
                indices.append(index)
                arrays.append(data)
        if self.fill and len(indices) < size:
            start = (step + 1) * size
            for k in range(len(order)):
                if len(indices) == size:
                    break
                index = order[(start + k) % len(order)]
                data = self.reader.read(index)
                if data is not None:
                    indices.append(index)
                    arrays.append(data)
            if len(indices) < size:
                raise DatasetError(f"rank {self.sampler.rank} found too few readable images "
                                   "to fill a batch; run `hpt-hpc data check` on the dataset")
        return indices, arrays


class EvalFeed:
    """DALI source of one pass over ``order`` in batches of up to ``batch_size`` readable
    images (unreadable ones dropped); raises StopIteration at the end of the pass.
    Each sample's meta output is ``[index, 0, position]``."""

    def __init__(self, reader: FileReader, order: Sequence[int], batch_size: int):
        self.reader, self.order, self.batch_size = reader, list(order), int(batch_size)
        self.position = 0
        self.in_flight: Deque[FedBatch] = deque()
        self.error: Optional[BaseException] = None

    def __call__(self):
        start = self.position
        indices, arrays = [], []
        try:
            while len(indices) < self.batch_size and self.position < len(self.order):
                index = self.order[self.position]
                self.position += 1
                data = self.reader.read(index)
                if data is not None:
                    indices.append(index)
                    arrays.append(data)
        except Exception as exc:
            self.error = exc
            raise
        if not indices:
            raise StopIteration
        self.in_flight.append(FedBatch(0, start, indices))
        return arrays, _meta(indices, 0, start)
