"""Decode every image of a dataset and report counts, unreadable and non-image files (no torch).

Also counts the readable images the DALI backend cannot hand to its decoder as they are
(CMYK, alpha, palette, 16-bit, GIF/BMP/TIFF/WebP: see :mod:`hpt_hpc.data.dali_feed`);
``data.backend: dali`` decodes those with PIL, which is slower. Optionally writes, per
split, a clean CSV file list (``path,label[,label...]``, absolute paths) of the readable
images, usable as a ``filelist`` dataset.
"""
from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

from ..config.schema import DataConfig
from ..files import OutputError, atomic_write, output_file
from .bands import read_image
from .dali_feed import is_direct, is_direct_file
from .images import UnreadableImage
from .index import Listing
from .shard_set import ShardTable, damaged_shards
from .sources import DatasetError, ImageRecord, listing_to_save, save_listing, split_location

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import DatasetConfig

DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "test"}
DEFAULT_MAX_PIXELS = DataConfig().max_pixels


def _probe(records: Sequence[ImageRecord], i: int, channels: int,
           max_pixels: Optional[int] = None) -> Tuple[Optional[str], Optional[tuple]]:
    """(error reason or None, (mode, width, height, DALI decodes it directly) or None) of
    record ``i`` (read from its shard when packed); memory: one decoded image (at most
    ``max_pixels``) and a MiB of its file."""
    path = records[i].path
    try:
        data = records.read_bytes(i) if isinstance(records, ShardTable) else None
        img = read_image(path, channels, max_pixels, data=data)
        direct = channels in (1, 3) and (is_direct(data) if data is not None
                                         else is_direct_file(path))
    except UnreadableImage as exc:
        return exc.reason, None
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}", None
    if channels not in (1, 3):  # a band stack (C, H, W)
        return None, (f"{img.shape[0]} bands", img.shape[2], img.shape[1], False)
    return None, (img.mode, img.width, img.height, direct)


def _as_config(dataset, fmt: str, splits: Optional[Sequence[str]]):
    """A private copy of the dataset config with every requested split configured."""
    if hasattr(dataset, "path") and hasattr(dataset, "format"):
        ds = SimpleNamespace(path=dataset.path, format=dataset.format,
                             splits=dict(dataset.splits), max_images=None)
    else:
        splits = {"train": "train"} if fmt == "folder" else dict(DEFAULT_SPLITS)
        ds = SimpleNamespace(path=str(dataset), format=fmt, splits=splits, max_images=None)
    names = list(ds.splits) if splits is None else list(splits)
    if not names:
        raise DatasetError(f"no splits to check in {ds.path!r}")
    ds.splits.update({s: s for s in names if s not in ds.splits})
    return ds, names


def _check_split(ds, split: str, channels: int, workers: int,
                 max_pixels: Optional[int]) -> Tuple[dict, List]:
    listing = listing_to_save(ds, split)
    records, classes, others = listing[:3]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(lambda i: _probe(records, i, channels, max_pixels),
                                range(len(records)), chunksize=64))
    class_counts = {name: 0 for name in classes}
    unreadable, readable, modes, converted = [], [], {}, []
    min_size, max_size = None, None
    for record, (reason, info) in zip(records, results):
        if reason is not None:
            unreadable.append({"path": record.path, "reason": reason})
            continue
        readable.append(record)
        for label in record.labels:
            if label < len(classes):
                class_counts[classes[label]] += 1
        mode, w, h, direct = info
        if not direct and channels in (1, 3):  # band stacks never reach DALI
            converted.append(record.path)
        modes[mode] = modes.get(mode, 0) + 1
        min_size = (w, h) if min_size is None or w * h < min_size[0] * min_size[1] else min_size
        max_size = (w, h) if max_size is None or w * h > max_size[0] * max_size[1] else max_size
    entry = {"location": split_location(ds, split), "listed": len(records),
             "readable": len(readable),
             "classes": classes, "class_counts": class_counts, "unreadable": unreadable,
             "non_image_files": others, "min_size": min_size, "max_size": max_size,
             "unlabelled": sum(1 for r in readable if not r.labels),
             "dali_converted": converted,
             "index": None if ds.format == "shards" else _save_index(ds, split, listing)}
    if isinstance(records, ShardTable):
        entry["damaged_shards"] = damaged_shards(records)
    return entry, readable


def _save_index(ds, split: str, listing: Listing) -> Optional[str]:
    """Save the listing as the split's index (see :mod:`hpt_hpc.data.index`); None when
    no place is writable."""
    try:
        return str(save_listing(ds, split, listing))
    except OSError:
        return None


def _listable(records: Sequence[ImageRecord]) -> None:
    """Refuse a file name a CSV file list cannot give back exactly (one line): a line
    break (read line by line) or bytes that are not UTF-8 (the list's encoding)."""
    for record in records:
        path = os.path.abspath(record.path)
        try:
            path.encode("utf-8")
            bad = "\n" in path or "\r" in path
        except UnicodeEncodeError:
            bad = True
        if bad:
            shown = repr(os.fsencode(path))[2:-1]
            raise OutputError(f"cannot write a clean list: the file name {shown} has a line "
                              f"break or bytes that are not UTF-8, which a file list cannot "
                              f"hold; rename it (nothing was written)")


def _write_list(path: str, records: Sequence[ImageRecord]) -> None:
    with atomic_write(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        for record in records:
            writer.writerow([os.path.abspath(record.path), *record.labels])


def check_dataset(dataset: Union["DatasetConfig", str], fmt: str = "imagefolder",
                  splits: Optional[Sequence[str]] = None, channels: int = 3,
                  write_clean_list: Optional[str] = None, workers: Optional[int] = None,
                  max_pixels: Optional[int] = DEFAULT_MAX_PIXELS) -> dict:
    """Fully decode every listed image of each split and return a report dict.

    ``dataset`` is a :class:`DatasetConfig` or a dataset folder (then ``fmt`` applies and
    the splits are train/val/test). A configured split that is missing is reported under
    ``missing_splits``, not raised; a missing dataset path, or a split that is there but
    malformed (a file list that is not UTF-8...), raises :class:`DatasetError`.
    ``write_clean_list="out/clean"`` (a name prefix, taken as typed) writes
    ``out/clean-<split>.csv`` per split.
    """
    ds, names = _as_config(dataset, fmt, splits)
    if write_clean_list and write_clean_list.endswith(".csv"):
        raise OutputError(f"the clean-list name {write_clean_list!r} ends in .csv, but it is "
                          f"a name prefix: data check writes <prefix>-<split>.csv (give "
                          f"{write_clean_list[:-len('.csv')]!r})")
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    split_location(ds, names[0])  # validates path and format first
    report = {"path": os.path.abspath(ds.path), "format": ds.format, "channels": channels,
              "splits": {}, "missing_splits": {}, "clean_lists": {}}
    lists = {}
    for split in names:
        try:
            entry, readable = _check_split(ds, split, channels, workers, max_pixels)
        except DatasetError as exc:
            if os.path.exists(split_location(ds, split)):
                raise  # there but malformed (a file list): the error, not a missing split
            report["missing_splits"][split] = str(exc)
            continue
        report["splits"][split] = entry
        if write_clean_list:
            out = f"{write_clean_list}-{split}.csv"
            output_file(out, {"a file list this command reads": split_location(ds, split)})
            _listable(readable)
            lists[out] = readable
    for out, readable in lists.items():  # every split checked first: all lists or none
        _write_list(out, readable)
    report["clean_lists"] = {split: os.path.abspath(f"{write_clean_list}-{split}.csv")
                             for split in report["splits"] if write_clean_list}
    entries = report["splits"].values()
    report["unreadable_count"] = sum(len(e["unreadable"]) for e in entries)
    report["damaged_shards"] = sum(len(e.get("damaged_shards", [])) for e in entries)
    report["non_image_count"] = sum(len(e["non_image_files"]) for e in entries)
    empty = [s for s, e in report["splits"].items() if e["readable"] == 0]
    report["unusable"] = ("no split found" if not report["splits"] else
                          f"no readable image in {', '.join(empty)}" if empty else None)
    report["ok"] = report["unusable"] is None and report["unreadable_count"] == 0 and \
        not report["damaged_shards"]
    return report


def _size(size: Optional[tuple]) -> str:
    return "-" if size is None else f"{size[0]}x{size[1]}"


def format_report(report: dict, max_files: int = 20) -> str:
    """Human-readable summary of :func:`check_dataset`'s report."""
    lines = [f"dataset {report['path']} ({report['format']}, channels={report['channels']})"]
    for split, e in report["splits"].items():
        lines.append(f"  {split}: {e['readable']}/{e['listed']} readable images, "
                     f"{len(e['classes'])} classes, sizes {_size(e['min_size'])}.."
                     f"{_size(e['max_size'])}")
        counts = ", ".join(f"{c}={n}" for c, n in e["class_counts"].items())
        if counts:
            lines.append(f"    per class: {counts}")
        if e.get("index"):
            lines.append(f"    listing saved for reuse: {e['index']}")
        if e["unlabelled"]:
            lines.append(f"    unlabelled: {e['unlabelled']}")
        if e.get("dali_converted"):
            lines.append(f"    backend dali decodes {len(e['dali_converted'])} of them with PIL "
                         "(not plain 8-bit JPEG/PNG: CMYK, alpha, palette, 16-bit, GIF...)")
        for title, items in (("damaged shards", [f"{d['shard']}: {d['reason']}" for d in
                                                 e.get("damaged_shards", [])]),
                             ("unreadable", [f"{u['path']}: {u['reason']}"
                                             for u in e["unreadable"]]),
                             ("non-image files (ignored)", e["non_image_files"])):
            if items:
                lines.append(f"    {title} ({len(items)}):")
                lines += [f"      {item}" for item in items[:max_files]]
                if len(items) > max_files:
                    lines.append(f"      ... and {len(items) - max_files} more")
    for split, message in report["missing_splits"].items():
        lines.append(f"  {split}: missing ({message})")
    for split, path in report["clean_lists"].items():
        lines.append(f"  clean list for {split}: {path}")
    if report["unusable"]:
        status = f"NOT USABLE ({report['unusable']})"
    elif report["damaged_shards"]:
        status = (f"usable, with PROBLEMS ({report['damaged_shards']} shard(s) differ from "
                  f"their manifest: pack again with `hpt-hpc data shard`)")
    elif report["unreadable_count"]:
        status = (f"usable, with PROBLEMS ({report['unreadable_count']} unreadable, skipped "
                  f"by training)")
    else:
        status = "OK"
    lines.append(f"status: {status}")
    return "\n".join(lines)
