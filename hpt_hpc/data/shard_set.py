"""A packed split (``format: shards``) as the listing every command reads (no torch).

:func:`read_shard_listing` checks the manifest written by ``hpt-hpc data shard``
(:mod:`hpt_hpc.data.shards`) against its listing and returns a
:class:`~hpt_hpc.data.index.Listing` whose records are a :class:`ShardTable`: the packed
images in shard order (paths relative to the source split, labels), plus where each shard
lies. Counting, classes and labels work as for any listing; the loaders read the tars.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Dict, Iterable, List, NamedTuple, Optional

import numpy as np

from .index import Listing, stamp
from .errors import DatasetError
from .table import RecordTable

SHARDS_FORMAT = "hpt-hpc-shards/1"
MANIFEST = "manifest.json"
LISTING = "listing.npz"
KEY_DIGITS = 9


def sample_key(row: int) -> str:
    """The key of packed row ``row`` inside its tar (``%09d``: members sort in row order)."""
    return f"{row:0{KEY_DIGITS}d}"


class Shard(NamedTuple):
    """One tar: its file, DALI index file, first row in the table and image count."""

    path: str
    index_path: str
    first: int
    count: int


class ShardTable(RecordTable):
    """The records of a packed split in shard order, with its :class:`Shard` list, or a
    subset of them (``take``: ``packed`` maps its rows to packed rows). ``read_bytes(i)``
    reads one image from its tar by the offset in the shard's index file (one open per
    shard and process): what evaluations, which need any image in any order, use."""

    def __init__(self, root: str, arrays, shards: List[Shard], manifest: dict,
                 packed: Optional[np.ndarray] = None):
        super().__init__(root, *arrays)
        self.shards, self.manifest, self.packed = shards, manifest, packed
        self._where: Optional[tuple] = None  # (shard, offset, size) per packed row
        self._handles: Dict[int, int] = {}
        self._pid = -1

    @property
    def complete(self) -> bool:
        """True for the whole packed split (what the streaming loaders read)."""
        return self.packed is None

    def packed_row(self, row: int) -> int:
        return row if self.packed is None else int(self.packed[row])

    def take(self, indices: Iterable[int]) -> "ShardTable":
        indices = np.asarray(list(indices), dtype=np.int64)
        plain = super().take(indices.tolist())
        packed = indices if self.packed is None else self.packed[indices]
        subset = ShardTable(plain.root, [getattr(plain, n) for n in self.ARRAYS],
                            self.shards, self.manifest, packed)
        subset._where = self._where
        return subset

    def locate(self) -> None:
        """Read every shard's index file (once; before loader workers fork)."""
        if self._where is not None:
            return
        total = self.shards[-1].first + self.shards[-1].count if self.shards else 0
        shard = np.zeros(total, np.int32)
        offset, size = np.zeros(total, np.int64), np.zeros(total, np.int64)
        for k, s in enumerate(self.shards):
            try:
                with open(s.index_path, encoding="utf-8") as handle:
                    lines = handle.read().splitlines()[1:]
            except OSError as exc:
                raise DatasetError(f"cannot read the index {s.index_path}: "
                                   f"{exc.strerror or exc}; pack the split again") from None
            if len(lines) != s.count:
                raise DatasetError(f"{s.index_path} lists {len(lines)} samples, the manifest "
                                   f"{s.count}; pack the split again")
            for j, line in enumerate(lines):  # image member first: "ext offset size name"
                fields = line.split(" ")
                shard[s.first + j], offset[s.first + j] = k, int(fields[1])
                size[s.first + j] = int(fields[2])
        self._where = (shard, offset, size)

    def read_bytes(self, row: int) -> bytes:
        """The encoded image of ``row`` (OSError when its tar cannot be read)."""
        self.locate()
        if self._pid != os.getpid():  # a forked worker opens its own descriptors
            self._handles, self._pid = {}, os.getpid()
        packed = self.packed_row(row)
        shard, offset, size = (int(a[packed]) for a in self._where)
        fd = self._handles.get(shard)
        if fd is None:
            fd = self._handles[shard] = os.open(self.shards[shard].path, os.O_RDONLY)
        data = os.pread(fd, size, offset)
        if len(data) != size:
            raise OSError(f"{self.shards[shard].path} ends before image {packed:09d} "
                          "(truncated)")
        return data

    def key(self, row: int) -> str:
        """Where row ``row`` lies, for messages: ``shard-00003.tar:000000012 (0/12.png)``."""
        shard = next(s for s in self.shards if s.first <= row < s.first + s.count)
        return f"{os.path.basename(shard.path)}:{row:09d} ({self.relative_path(row)})"


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_shard_listing(location: str) -> Listing:
    """The listing of the packed split in folder ``location``; a missing, foreign or
    inconsistent manifest is a :class:`DatasetError` naming what to do."""
    manifest_path = os.path.join(location, MANIFEST)
    redo = "pack it again with `hpt-hpc data shard`"
    try:
        with open(manifest_path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise DatasetError(f"{manifest_path} does not exist: {location!r} is not a packed "
                           f"split (format: shards); {redo}") from None
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read the shard manifest {manifest_path}: {exc}; "
                           f"{redo}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != SHARDS_FORMAT:
        raise DatasetError(f"{manifest_path} is not a manifest of `hpt-hpc data shard` "
                           f"(format {SHARDS_FORMAT}); {redo}")
    listing_path = os.path.join(location, LISTING)
    try:
        if sha256_of(listing_path) != manifest.get("listing_sha256"):
            raise DatasetError(f"{listing_path} does not match its manifest (edited or "
                               f"damaged); {redo}")
        with np.load(listing_path, allow_pickle=False) as data:
            arrays = [data[name] for name in RecordTable.ARRAYS]
        rows, shards = 0, []
        for entry in manifest["shards"]:
            shards.append(Shard(os.path.join(location, _plain(entry["name"])),
                                os.path.join(location, _plain(entry["index"])),
                                int(entry["first"]), int(entry["count"])))
            if shards[-1].first != rows:
                raise ValueError(f"shard {entry['name']} starts at row {entry['first']}, "
                                 f"not {rows}")
            rows += shards[-1].count
        root = manifest["source"]["root"]
    except OSError as exc:
        raise DatasetError(f"cannot read {listing_path}: {exc.strerror or exc}; "
                           f"{redo}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"the shard manifest {manifest_path} is inconsistent ({exc}); "
                           f"{redo}") from None
    table = ShardTable(root, arrays, shards, manifest)
    if rows != len(table) or manifest.get("images") != len(table):
        raise DatasetError(f"the shard manifest {manifest_path} counts {manifest.get('images')}"
                           f" images in shards of {rows}, its listing {len(table)}; {redo}")
    return Listing(table, list(manifest.get("classes", [])), [], [stamp(manifest_path)],
                   time.time_ns())


def _plain(name: str) -> str:
    """A shard file name from a manifest: a plain name in the split folder, nothing else."""
    if not isinstance(name, str) or os.path.basename(name) != name or name in ("", ".", ".."):
        raise ValueError(f"shard name {name!r} is not a file name in the split folder")
    return name


def damaged_shards(table: ShardTable) -> List[dict]:
    """``{"shard", "reason"}`` of every shard whose size or SHA-256 differs from the
    manifest (or that cannot be read): the shards a training run would skip in part."""
    damaged = []
    for entry in table.manifest.get("shards", []):
        path = os.path.join(os.path.dirname(table.shards[0].path), entry["name"])
        try:
            size = os.path.getsize(path)
            reason = (f"{size} bytes, the manifest says {entry['bytes']}"
                      if size != entry["bytes"] else
                      "its SHA-256 differs from the manifest's"
                      if sha256_of(path) != entry["sha256"] else None)
        except OSError as exc:
            reason = f"cannot be read ({exc.strerror or exc})"
        if reason:
            damaged.append({"shard": path, "reason": reason})
    return damaged
