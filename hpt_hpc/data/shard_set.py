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
from typing import List, NamedTuple

import numpy as np

from .index import Listing, stamp
from .errors import DatasetError
from .table import RecordTable

SHARDS_FORMAT = "hpt-hpc-shards/1"
MANIFEST = "manifest.json"
LISTING = "listing.npz"


class Shard(NamedTuple):
    """One tar: its file, DALI index file, first row in the table and image count."""

    path: str
    index_path: str
    first: int
    count: int


class ShardTable(RecordTable):
    """The records of a packed split in shard order, with its :class:`Shard` list.
    ``take`` gives a plain :class:`RecordTable` (a subset is no longer a set of shards)."""

    def __init__(self, root: str, arrays, shards: List[Shard], manifest: dict):
        super().__init__(root, *arrays)
        self.shards, self.manifest = shards, manifest

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
    redo = f"pack it again with `hpt-hpc data shard`"
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
