"""List the images of one dataset split (no image is opened here; no torch import).

Three on-disk formats (see :class:`hpt_hpc.config.DatasetConfig`):

* ``imagefolder``: ``path/<split>/<class>/<image>``; classes and files sorted, so label ``i``
  is the ``i``-th class folder in sorted order.
* ``filelist``: ``path/<split>`` is a ``.csv``/``.txt`` file of ``image_path[,label...]`` lines
  (``.txt`` lines may also be whitespace separated). Paths are relative to the list's folder
  unless absolute; ``#`` starts a comment line; a first line whose labels are not integers
  (``path,label``) is a header and skipped. Labels are integers; several labels make a
  multi-label record; class names are ``"0"..str(max_label)``. A split named without an
  extension (``train``) also finds ``train.csv`` or ``train.txt``.
* ``folder``: every image below ``path/<split>`` (flat or nested, sorted), unlabelled: for
  pretraining on your own images; evaluations need one of the labelled formats. Without a
  ``path/train`` folder, ``path`` itself is the training split.

Hidden files (``.name``) are never listed as images. Symbolic links are followed (symlink
farms), but no folder is walked twice: a link back into the tree (``ln -s . again``) or a
second link to a folder walked already is named as ignored, never followed.
"""
from __future__ import annotations

import csv
import logging
import os
import random
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

from ..config.schema import DATASET_FORMATS as FORMATS
from .errors import DatasetError
from .index import (INDEX_DIR, RACY_NS, Listing, is_racy, load_index, make_room, save_index,
                    stamp)
from .shard_set import read_shard_listing
from .table import ImageRecord, RecordTable, TableBuilder

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path

    from hpt_hpc.config.schema import DatasetConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SUBSET_SEED = 0  # seed of the shuffle that picks a ``max_images`` subset
SLOW_LISTING_S = 10.0  # a listing this slow suggests `hpt-hpc data index`

log = logging.getLogger(__name__)


def is_image_file(name: str) -> bool:
    """True when ``name`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _is_listed(path: str, regular: bool) -> bool:
    """A regular file with an image extension whose name is not hidden."""
    name = os.path.basename(path)
    return regular and is_image_file(name) and not name.startswith(".")


def split_location(ds_cfg: "DatasetConfig", split: str) -> str:
    """The folder (imagefolder) or list file (filelist) of ``split``; validates the config."""
    if ds_cfg.format not in FORMATS:
        raise DatasetError(f"unknown dataset format {ds_cfg.format!r} for {ds_cfg.path!r}; "
                           f"use one of {', '.join(FORMATS)}")
    if not ds_cfg.path:
        raise DatasetError("dataset path is empty; set datasets.<name>.path in the config")
    if not os.path.isdir(ds_cfg.path):
        raise DatasetError(f"dataset path {ds_cfg.path!r} does not exist or is not a folder; "
                           "fix datasets.<name>.path or run `hpt-hpc data prepare`")
    if split not in ds_cfg.splits:
        raise DatasetError(f"split {split!r} is not configured for {ds_cfg.path!r} "
                           f"(configured: {', '.join(sorted(ds_cfg.splits)) or 'none'})")
    location = os.path.join(ds_cfg.path, ds_cfg.splits[split])
    if ds_cfg.format == "folder" and split == "train" and not os.path.isdir(location):
        return ds_cfg.path  # a plain folder of images is the training split
    if ds_cfg.format == "filelist" and not os.path.exists(location) and \
            not os.path.splitext(location)[1]:
        for ext in (".csv", ".txt"):  # ``train`` may name ``train.csv`` / ``train.txt``
            if os.path.isfile(location + ext):
                return location + ext
    return location


def is_own_folder(ds_cfg: "DatasetConfig", location: str) -> bool:
    """True when the split at ``location`` is the dataset folder itself (format folder
    without ``train/``): its index lives inside it (:mod:`hpt_hpc.data.index`)."""
    return os.path.abspath(location) == os.path.abspath(ds_cfg.path)


def scan_imagefolder(split_dir: str) -> Listing:
    """Records, sorted class names and the non-image files (strays included) of a folder."""
    if not os.path.isdir(split_dir):
        raise DatasetError(f"split folder {split_dir!r} does not exist; expected "
                           "<path>/<split>/<class>/<image> (format: imagefolder)")
    split_dir = os.path.abspath(split_dir)  # absolute paths, listed or from the index
    built, stamps = time.time_ns(), [stamp(split_dir)]
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    seen, classes, others = {_folder_key(split_dir)}, [], []
    for e in entries:
        if not e.is_dir():
            others.append(e.path)
        elif not e.name.startswith("."):
            key = _folder_key(e.path)
            if key in seen:  # a link to the split itself or to another class: no class
                others.append(e.path)
            else:
                classes.append(e.name)
                seen.add(key)
    seen = {_folder_key(split_dir)}  # the classes are walked below
    builder = TableBuilder(split_dir)
    for label, name in enumerate(classes):
        for path, regular in _walk(split_dir, name, stamps, seen):
            if _is_listed(path, regular):
                builder.add_path(path, (label,))
            else:  # strays, and FIFOs/sockets/devices however they are named
                others.append(path)
    return Listing(builder.table(), classes, others, stamps, built)


def scan_folder(split_dir: str) -> Listing:
    """Unlabelled records of every image below a folder (any depth) and its strays."""
    if not os.path.isdir(split_dir):
        raise DatasetError(f"folder {split_dir!r} does not exist; expected images anywhere "
                           "below <path>/<split> (format: folder)")
    split_dir = os.path.abspath(split_dir)
    built, stamps, others = time.time_ns(), [], []
    builder = TableBuilder(split_dir)
    for path, regular in _walk(split_dir, "", stamps, set()):
        if _is_listed(path, regular):
            builder.add_path(path, ())
        else:
            others.append(path)
    return Listing(builder.table(), [], others, stamps, built)


def scan_split(ds_cfg: "DatasetConfig", split: str, use_index: bool = True) -> Listing:
    """The listing of one split, in any format (no subset): from its index
    (:mod:`hpt_hpc.data.index`) while the tree is unchanged, else from the tree."""
    location = split_location(ds_cfg, split)
    if ds_cfg.format == "shards":  # the manifest is the listing
        return read_shard_listing(location)
    if use_index:
        indexed = load_index(location, ds_cfg.format, is_own_folder(ds_cfg, location))
        if indexed is not None:
            return indexed
    started = time.monotonic()
    if ds_cfg.format == "imagefolder":
        listing = scan_imagefolder(location)
    elif ds_cfg.format == "folder":
        listing = scan_folder(location)
    else:
        listing = read_filelist(location)
    seconds = time.monotonic() - started
    if use_index and seconds > SLOW_LISTING_S:
        log.warning("listing %s took %.0f s; `hpt-hpc data index` saves the listing for the "
                    "next runs (reused while the tree is unchanged)", location, seconds)
    return listing


def listing_to_save(ds_cfg: "DatasetConfig", split: str) -> Listing:
    """``split`` listed from the tree (never from an index), its index's place made first."""
    location = split_location(ds_cfg, split)
    if is_own_folder(ds_cfg, location):
        make_room(location)
    return scan_split(ds_cfg, split, use_index=False)


def save_listing(ds_cfg: "DatasetConfig", split: str, listing: Listing) -> "Path":
    """Save ``listing`` as the index of ``split``; OSError when no place is writable."""
    location = split_location(ds_cfg, split)
    return save_index(location, ds_cfg.format, listing, is_own_folder(ds_cfg, location))


def index_split(ds_cfg: "DatasetConfig", split: str) -> Tuple[Listing, "Path"]:
    """List ``split`` from the tree and save its index; a tree changed within the last
    seconds is listed once more after they pass (see :data:`~hpt_hpc.data.index.RACY_NS`).
    Raises OSError when no place is writable."""
    listing = listing_to_save(ds_cfg, split)
    if is_racy(listing):
        time.sleep(RACY_NS / 1e9)
        listing = scan_split(ds_cfg, split, use_index=False)
    return listing, save_listing(ds_cfg, split, listing)


def _folder_key(path: str) -> Tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def _walk(top: str, rel: str, stamps: list, seen: set):
    """``(path, is a regular file)`` of every non-folder below ``top/rel`` in os.walk's
    sorted order; the type comes from the directory entry (no extra stat, nothing opened).
    Appends the stamp of every folder walked to ``stamps`` (taken before it is read). The
    dataset index's own folder is not walked, nor a folder in ``seen`` (``(st_dev,
    st_ino)`` of those walked: a symlink loop or a second link), which is yielded as a
    non-file instead."""
    folder = os.path.join(top, rel)
    key = _folder_key(folder)
    if key in seen:
        yield folder, False
        return
    seen.add(key)
    stamps.append(stamp(top, rel))
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:  # files first, then subfolders (os.walk's order)
        if not entry.is_dir():
            yield entry.path, entry.is_file()
    for entry in entries:
        if entry.is_dir() and entry.name != INDEX_DIR:
            yield from _walk(top, os.path.join(rel, entry.name), stamps, seen)


def _parse_labels(fields: Sequence[str]) -> Optional[Tuple[int, ...]]:
    try:
        return tuple(int(f) for f in fields if f != "")
    except ValueError:
        return None


def _utf8_lines(list_file: str):
    """``(line number, text)`` of a UTF-8 file; another encoding is a :class:`DatasetError`
    naming the line and the byte offset (never a guess at the names it holds)."""
    offset = 0
    with open(list_file, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            try:
                yield lineno, raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"{list_file}:{lineno}: not UTF-8 (byte {offset + exc.start} is "
                    f"0x{raw[exc.start]:02x}); re-encode the file list as UTF-8, e.g. `iconv "
                    f"-f latin1 -t utf-8 {list_file} > new.csv`") from None
            offset += len(raw)


def read_filelist(list_file: str) -> Listing:
    """Parse a CSV/TXT file list into records (paths made absolute-or-joined); class names
    are ``"0"..str(max_label)``."""
    if not os.path.isfile(list_file):
        raise DatasetError(f"file list {list_file!r} does not exist; expected a .csv/.txt file "
                           "of image_path[,label...] lines (format: filelist)")
    base = os.path.dirname(os.path.abspath(list_file))
    is_txt = list_file.lower().endswith(".txt")
    built, stamps = time.time_ns(), [stamp(list_file)]
    records = TableBuilder(base)
    for lineno, text in _utf8_lines(list_file):
        text = text.strip()
        if not text or text.startswith("#"):
            continue
        if is_txt and "," not in text:
            fields = text.split()
        else:
            fields = [f.strip() for f in next(csv.reader([text]))]
        labels = _parse_labels(fields[1:])
        if labels is None:
            if not records:  # header line such as ``path,label``
                continue
            raise DatasetError(f"{list_file}:{lineno}: labels must be integers, got "
                               f"{fields[1:]!r}")
        if any(lab < 0 for lab in labels):
            raise DatasetError(f"{list_file}:{lineno}: negative label in {fields[1:]!r}")
        path = fields[0]
        if not os.path.isabs(path):
            path = os.path.join(base, path)
        records.add_path(path, labels)
    table = records.table()
    return Listing(table, [str(i) for i in range(table.max_label() + 1)], [], stamps, built)


def subset(records: RecordTable, max_images: int) -> RecordTable:
    """``max_images`` records, stratified by first label in class proportion (seeded
    shuffle within each class), returned in listing order."""
    if max_images <= 0:
        raise DatasetError(f"max_images must be positive, got {max_images}")
    order = list(range(len(records)))
    random.Random(SUBSET_SEED).shuffle(order)
    first = records.first_labels().tolist()
    strata: Dict[int, List[int]] = {}
    for i in order:
        strata.setdefault(first[i], []).append(i)
    # the k-th of n members of a class sits at (k + 0.5) / n: taking the smallest positions
    # picks every class in proportion to its size
    keyed = [((k + 0.5) / len(members), i) for members in strata.values()
             for k, i in enumerate(members)]
    return records.take(sorted(i for _, i in sorted(keyed)[:max_images]))


def list_split(ds_cfg: "DatasetConfig", split: str) -> Tuple[RecordTable, List[str]]:
    """Records and class names of ``split``; ``max_images`` applies to ``train`` only."""
    records, classes = scan_split(ds_cfg, split)[:2]
    if not records:
        raise DatasetError(f"split {split!r} of {ds_cfg.path!r} has no images (looked in "
                           f"{split_location(ds_cfg, split)!r}; extensions: "
                           f"{' '.join(IMAGE_EXTENSIONS)})")
    if split == "train" and ds_cfg.max_images is not None:
        if ds_cfg.format == "shards":
            raise DatasetError(f"max_images does not apply to format shards ({ds_cfg.path!r}):"
                               " pack the subset instead, or remove max_images")
        records = subset(records, ds_cfg.max_images)
    return records, classes
