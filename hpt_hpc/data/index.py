"""Dataset index: a split's listing saved once and reused while the tree is unchanged.

Listing 1.28M files walks every directory entry; on a parallel filesystem that takes
minutes. ``hpt-hpc data index`` (and ``data check``) save the :class:`Listing` of a split —
its compact :class:`~hpt_hpc.data.table.RecordTable`, classes, strays — with the
modification time of every folder it walked (of the list file, for file lists). Adding,
removing or renaming an image changes its folder's time, so a listing checks those times
(one ``stat`` per folder: ~1,000 for ImageNet) and uses the index only when all match.
Folders changed within :data:`RACY_NS` of the scan are never trusted (coarse clocks).

Where: ``.<split>.hpt-index.npz`` beside the split folder or list file, inside the
dataset folder (``PATH/.train.hpt-index.npz``); a dataset folder that is itself the split
(format ``folder`` without ``train/``) keeps it inside, in ``PATH/.hpt-index/`` (a folder
made before the listing, so writing the index never changes the listed folder's time);
where neither is writable, ``$XDG_CACHE_HOME/hpt-hpc/index/<hash>.npz`` (``~/.cache``).
Nothing is written outside the dataset folder but the cache.

Trust: an index carries a digest of its listing parameters (format, location, kind, root)
and of everything it lists; an index whose digest does not match, or (format
``imagefolder``/``folder``) with an entry outside the split folder, is ignored and the
split listed again (one warning says so): nothing outside the split is ever read.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import numpy as np

from ..files import atomic_write
from .table import RecordTable

INDEX_FORMAT = 2  # 2: with a digest
INDEX_DIR = ".hpt-index"  # inside a dataset folder that is itself a split; never listed
RACY_NS = 2_000_000_000  # folders changed this close to the scan may hide a later change
CONTAINED_KINDS = ("imagefolder", "folder")  # listings whose entries all lie below the split

log = logging.getLogger(__name__)


class Listing(NamedTuple):
    """What listing a split found; ``stamps``: ``(path below the split, size or -1 for a
    folder, mtime_ns)`` of everything whose change would change the listing."""

    records: RecordTable
    classes: List[str]
    others: List[str]
    stamps: List[Tuple[str, int, int]]
    built_ns: int


def stamp(location: str, rel: str = "") -> Tuple[str, int, int]:
    """The stamp of ``location/rel`` now (a folder's size is -1)."""
    info = os.stat(os.path.join(location, rel) if rel else location)
    return rel, -1 if stat.S_ISDIR(info.st_mode) else info.st_size, info.st_mtime_ns


def index_paths(location: str, own_folder: bool = False) -> List[Path]:
    """Where the index of ``location`` is looked for, in order: beside it, or inside it
    when ``own_folder`` (the split is the dataset folder itself), then the cache."""
    location = os.path.abspath(location)
    if own_folder:
        first = Path(location) / INDEX_DIR / "listing.npz"
    else:
        first = Path(os.path.dirname(location)) / f".{os.path.basename(location)}.hpt-index.npz"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(location.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return [first, cache / "hpt-hpc" / "index" / f"{digest}.npz"]


def make_room(location: str) -> None:
    """Make the index folder inside ``location`` (a dataset folder that is its own split)
    before it is listed: made later, it would change the folder's time and so outdate the
    index at once. A read-only folder is left alone (the index goes to the cache)."""
    try:
        os.makedirs(os.path.join(location, INDEX_DIR), exist_ok=True)
    except OSError:
        pass


def is_racy(listing: Listing) -> bool:
    """True when something changed so close to the scan that its time cannot be trusted."""
    return any(mtime > listing.built_ns - RACY_NS for _, _, mtime in listing.stamps)


def save_index(location: str, kind: str, listing: Listing, own_folder: bool = False) -> Path:
    """Write the index of ``location`` (atomically) to the first writable place."""
    meta = {"format": INDEX_FORMAT, "location": os.path.abspath(location), "kind": kind,
            "root": listing.records.root, "classes": listing.classes,
            "others": listing.others, "stamps": listing.stamps,
            "built_ns": listing.built_ns}
    arrays = {name: getattr(listing.records, name) for name in RecordTable.ARRAYS}
    meta["digest"] = _digest(meta, arrays)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    errors = []
    for path in index_paths(location, own_folder):
        try:
            with atomic_write(path) as handle:
                np.savez(handle, **arrays)
            return path
        except OSError as exc:
            errors.append(f"{path.parent}: {exc.strerror or exc}")
    raise OSError("no writable place for the dataset index (" + "; ".join(errors) + ")")


def load_index(location: str, kind: str, own_folder: bool = False) -> Optional[Listing]:
    """The saved listing of ``location`` when it is still exact, else None."""
    for path in index_paths(location, own_folder):
        listing = _read(path, location, kind)
        if listing is not None:
            return listing
    return None


def _digest(meta: dict, arrays: dict) -> str:
    """SHA-256 of the listing parameters and entries (``meta`` less its digest)."""
    h = hashlib.sha256(json.dumps({k: v for k, v in meta.items() if k != "digest"},
                                  sort_keys=True).encode())
    for name in RecordTable.ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def _outside(table: RecordTable, location: str) -> Optional[str]:
    """The first entry of an ``imagefolder``/``folder`` listing not below ``location``."""
    if table.root != location:
        return table.root
    blob = table.blob.tobytes()
    starts = np.concatenate(([0], table.ends[:-1])) if len(table) else table.ends
    if len(table) and (table.blob[starts[table.ends > starts]] == ord("/")).any():
        return next(table.path(i) for i in range(len(table))
                    if os.path.isabs(table.relative_path(i)))
    if b".." in blob:  # a name with '..' in it, or a '..' component: look closer
        for i in range(len(table)):
            rel = table.relative_path(i)
            if not rel or os.path.normpath(rel).split(os.sep)[0] == os.pardir:
                return table.path(i)
    return None


def _read(path: Path, location: str, kind: str) -> Optional[Listing]:
    location = os.path.abspath(location)
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta.get("format") != INDEX_FORMAT or meta.get("kind") != kind or \
                    meta.get("location") != location:
                return None
            arrays = {n: data[n] for n in RecordTable.ARRAYS}
            if meta.get("digest") != _digest(meta, arrays):
                log.warning("dataset index %s does not match its digest (edited or damaged): "
                            "listing %s again; `hpt-hpc data index` replaces it", path,
                            location)
                return None
            stamps = [tuple(s) for s in meta["stamps"]]
            table = RecordTable(meta["root"], *(arrays[n] for n in RecordTable.ARRAYS))
            listing = Listing(table, meta["classes"], meta["others"], stamps,
                              int(meta["built_ns"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable or foreign: list the tree instead
    outside = _outside(listing.records, location) if kind in CONTAINED_KINDS else None
    if outside is not None:
        log.warning("dataset index %s lists %s, outside %s: listing it again; `hpt-hpc data "
                    "index` replaces it", path, outside, location)
        return None
    if is_racy(listing):
        return None
    try:
        if any(stamp(location, rel) != (rel, size, mtime) for rel, size, mtime in stamps):
            return None
    except OSError:
        return None
    return listing
