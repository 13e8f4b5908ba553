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

Hidden files (``.name``) are never listed as images.
"""
from __future__ import annotations

import csv
import os
import random
from typing import TYPE_CHECKING, Dict, List, NamedTuple, Optional, Sequence, Tuple

from ..config.schema import DATASET_FORMATS as FORMATS
from ..errors import HptError

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import DatasetConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SUBSET_SEED = 0  # seed of the shuffle that picks a ``max_images`` subset


class DatasetError(HptError, ValueError):
    """A dataset is missing, empty or malformed (raised before any training work)."""


class ImageRecord(NamedTuple):
    """One image: its file and its integer labels (empty for unlabelled images)."""

    path: str
    labels: Tuple[int, ...]


def is_image_file(name: str) -> bool:
    """True when ``name`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


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


def scan_imagefolder(split_dir: str) -> Tuple[List[ImageRecord], List[str], List[str]]:
    """Records, sorted class names and the non-image files (strays included) of a folder."""
    if not os.path.isdir(split_dir):
        raise DatasetError(f"split folder {split_dir!r} does not exist; expected "
                           "<path>/<split>/<class>/<image> (format: imagefolder)")
    entries = sorted(os.scandir(split_dir), key=lambda e: e.name)
    classes = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    others = [e.path for e in entries if not e.is_dir()]
    records: List[ImageRecord] = []
    for label, name in enumerate(classes):
        for path, regular in _walk(os.path.join(split_dir, name)):
            fname = os.path.basename(path)
            if regular and is_image_file(fname) and not fname.startswith("."):
                records.append(ImageRecord(path, (label,)))
            else:  # strays, and FIFOs/sockets/devices however they are named
                others.append(path)
    return records, classes, others


def scan_folder(split_dir: str) -> Tuple[List[ImageRecord], List[str]]:
    """Unlabelled records of every image below a folder (any depth) and its strays."""
    if not os.path.isdir(split_dir):
        raise DatasetError(f"folder {split_dir!r} does not exist; expected images anywhere "
                           "below <path>/<split> (format: folder)")
    records, others = [], []
    for path, regular in _walk(split_dir):
        fname = os.path.basename(path)
        if regular and is_image_file(fname) and not fname.startswith("."):
            records.append(ImageRecord(path, ()))
        else:
            others.append(path)
    return records, others


def scan_split(ds_cfg: "DatasetConfig", split: str
               ) -> Tuple[List[ImageRecord], List[str], List[str]]:
    """Records, class names and stray files of one split, in any format (no subset)."""
    location = split_location(ds_cfg, split)
    if ds_cfg.format == "imagefolder":
        return scan_imagefolder(location)
    if ds_cfg.format == "folder":
        records, others = scan_folder(location)
        return records, [], others
    records = read_filelist(location)
    top = max((max(r.labels) for r in records if r.labels), default=-1)
    return records, [str(i) for i in range(top + 1)], []


def _walk(folder: str):
    """``(path, is a regular file)`` of every non-folder below ``folder`` in os.walk's
    sorted order; the type comes from the directory entry (no extra stat, nothing opened)."""
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    for entry in entries:  # files first, then subfolders (os.walk's order)
        if not entry.is_dir():
            yield entry.path, entry.is_file()
    for entry in entries:
        if entry.is_dir():
            yield from _walk(entry.path)


def _parse_labels(fields: Sequence[str]) -> Optional[Tuple[int, ...]]:
    try:
        return tuple(int(f) for f in fields if f != "")
    except ValueError:
        return None


def read_filelist(list_file: str) -> List[ImageRecord]:
    """Parse a CSV/TXT file list into records (paths made absolute-or-joined)."""
    if not os.path.isfile(list_file):
        raise DatasetError(f"file list {list_file!r} does not exist; expected a .csv/.txt file "
                           "of image_path[,label...] lines (format: filelist)")
    base = os.path.dirname(os.path.abspath(list_file))
    is_txt = list_file.lower().endswith(".txt")
    records: List[ImageRecord] = []
    with open(list_file, newline="", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            text = line.strip()
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
            records.append(ImageRecord(path, labels))
    return records


def subset(records: Sequence[ImageRecord], max_images: int) -> List[ImageRecord]:
    """``max_images`` records, stratified by first label in class proportion (seeded
    shuffle within each class), returned in listing order."""
    if max_images <= 0:
        raise DatasetError(f"max_images must be positive, got {max_images}")
    order = list(range(len(records)))
    random.Random(SUBSET_SEED).shuffle(order)
    strata: Dict[int, List[int]] = {}
    for i in order:
        strata.setdefault(records[i].labels[0] if records[i].labels else -1, []).append(i)
    # the k-th of n members of a class sits at (k + 0.5) / n: taking the smallest positions
    # picks every class in proportion to its size
    keyed = [((k + 0.5) / len(members), i) for members in strata.values()
             for k, i in enumerate(members)]
    return [records[i] for i in sorted(i for _, i in sorted(keyed)[:max_images])]


def list_split(ds_cfg: "DatasetConfig", split: str) -> Tuple[List[ImageRecord], List[str]]:
    """Records and class names of ``split``; ``max_images`` applies to ``train`` only."""
    records, classes, _ = scan_split(ds_cfg, split)
    if not records:
        raise DatasetError(f"split {split!r} of {ds_cfg.path!r} has no images (looked in "
                           f"{split_location(ds_cfg, split)!r}; extensions: "
                           f"{' '.join(IMAGE_EXTENSIONS)})")
    if split == "train" and ds_cfg.max_images is not None:
        records = subset(records, ds_cfg.max_images)
    return records, classes
