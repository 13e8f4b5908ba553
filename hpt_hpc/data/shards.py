"""Pack a dataset split into tar shards (WebDataset layout) for cluster filesystems.

``hpt-hpc data shard SRC DEST`` lists each split with the one lister
(:func:`~hpt_hpc.data.sources.scan_split`), orders its images by a seeded permutation (so
every shard mixes the classes) and cuts that order into shards of about ``shard_size``
bytes. Shard ``i`` is a pure function of the plan (listing, order, cuts) and ``i``, so
shards may be written by separate processes in any order. ``DEST/<split>/`` then holds:

* ``shard-<i:05d>.tar``: per image three members, ``<key>.<ext>`` (the image bytes
  unchanged, its extension lower-cased), ``<key>.cls`` (its labels as ASCII integers
  separated by spaces, empty when unlabelled) and ``<key>.path`` (its path relative to the
  split, UTF-8). ``key`` is the image's position in the packed order (``%09d``): names
  with dots would split a WebDataset key. Tar headers are fixed (mtime 0, uid/gid 0, mode
  0644, no user names), so the same input gives byte-identical shards.
* ``shard-<i:05d>.idx``: the index DALI's ``fn.readers.webdataset`` reads (the format of
  DALI's ``wds2idx``: ``v1.2 <samples>``, then per sample ``ext offset size name`` per
  member).
* ``shard-<i:05d>.done.json``: the shard's count, size and SHA-256, written after it.
* ``listing.npz``: the packed records in shard order (a
  :class:`~hpt_hpc.data.table.RecordTable`: paths below the source split, labels).
* ``manifest.json``: source, classes, counts, bands per image, how many images DALI's
  decoder would not take as they are (``dali_indirect``: CMYK, alpha, 16-bit, TIFF,
  damaged; see :mod:`hpt_hpc.data.dali_feed`), the listing digest, the order seed, every
  shard's first record, count, bytes and SHA-256.

Resuming: a shard whose ``done.json`` matches the plan and whose SHA-256 still matches is
kept; every other shard is written again (atomically, through :mod:`hpt_hpc.files`).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ..files import OutputError, atomic_write, write_text_atomic
from .dali_feed import is_direct
from .shard_set import LISTING, MANIFEST, SHARDS_FORMAT, sample_key, sha256_of as file_sha256
from .sources import DatasetError, scan_split, split_location
from .table import RecordTable
EXAMPLES = 10  # images named per kind in a manifest
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def shard_name(index: int, suffix: str) -> str:
    """``shard-<index:05d>.<suffix>``: the file names of one shard."""
    return f"shard-{index:05d}.{suffix}"


def parse_size(text: str) -> int:
    """``64MB``, ``1.5G``, ``500k``, ``64MiB`` or plain bytes as a byte count (>= 1)."""
    match = _SIZE.match(str(text))
    if not match:
        raise DatasetError(f"shard size {text!r} is not a size; write e.g. 64MB, 1GB or 500k")
    number, unit, binary = match.groups()
    scale = 1024 ** " kmgt".index(unit.lower()) if binary.lower().startswith("i") and unit \
        else _UNITS[unit.lower()]
    size = int(float(number) * scale)
    if size < 1:
        raise DatasetError(f"shard size {text!r} must be at least one byte")
    return size


def table_digest(table: RecordTable) -> str:
    """SHA-256 of a listing's root and records (what a manifest and a plan are bound to)."""
    h = hashlib.sha256(table.root.encode("utf-8", "surrogateescape"))
    for name in RecordTable.ARRAYS:
        array = np.ascontiguousarray(getattr(table, name))
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.hexdigest()


def pack_order(count: int, seed: int) -> np.ndarray:
    """The seeded order in which ``count`` listed images are packed."""
    return np.random.default_rng(seed).permutation(count)


def cut_points(sizes: Sequence[int], shard_size: int) -> List[int]:
    """First record of every shard (and the end): a shard closes before the image that
    would take it past ``shard_size`` bytes (an image larger than that is a shard alone)."""
    cuts, total = [0], 0
    for i, size in enumerate(sizes):
        cost = _member_bytes(size)
        if total and total + cost > shard_size:
            cuts.append(i)
            total = 0
        total += cost
    cuts.append(len(sizes))
    return cuts


def _member_bytes(size: int) -> int:
    """Tar bytes of one sample of an image of ``size`` bytes (three headers, padding)."""
    return 512 + -(-size // 512) * 512 + 2 * 1024


def _info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def image_ext(path: str) -> str:
    return os.path.splitext(path)[1].lower().lstrip(".")


def write_shard(handle, index_handle, table: RecordTable, first: int, last: int,
                read: Callable[[str], bytes]) -> Dict[str, int]:
    """Write records ``first..last-1`` of ``table`` as one tar to ``handle`` and its DALI
    index to ``index_handle``; returns ``{"count", "bytes"}``."""
    lines = []
    with tarfile.open(fileobj=handle, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(first, last):
            key = sample_key(i)
            rel = table.relative_path(i)
            members = [(image_ext(rel), read(table.path(i))),
                       ("cls", " ".join(str(v) for v in table.labels_of(i)).encode()),
                       ("path", rel.encode("utf-8", "surrogateescape"))]
            parts = []
            for ext, data in members:
                info = _info(f"{key}.{ext}", len(data))
                offset = handle.tell() + len(info.tobuf(tar.format, tar.encoding, tar.errors))
                tar.addfile(info, io.BytesIO(data))
                parts.append(f"{ext} {offset} {len(data)} {info.name}")
            lines.append(" ".join(parts))
    index_handle.write(f"v1.2 {last - first}\n" + "".join(line + "\n" for line in lines))
    return {"count": last - first, "bytes": handle.tell()}


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise DatasetError(f"cannot read {path} while packing: {exc.strerror or exc}; "
                           "fix or remove it (`hpt-hpc data check` lists such files)") from None


def _sizes(table: RecordTable) -> List[int]:
    sizes = []
    for i in range(len(table)):
        try:
            sizes.append(os.stat(table.path(i)).st_size)
        except OSError as exc:
            raise DatasetError(f"cannot read {table.path(i)}: {exc.strerror or exc}") from None
    return sizes


def _bands(data: bytes, name: str) -> str:
    """The number of bands an image's header declares, as text ("?" when unknown)."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as img:
            return str(len(img.getbands()))
    except Exception:  # noqa: BLE001 - multi-band TIFFs PIL cannot open, broken images
        pass
    if image_ext(name) in ("tif", "tiff"):
        try:
            import tifffile
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                axes, shape = tif.series[0].axes, tif.series[0].shape
                return str(shape[axes.index("S")] if "S" in axes else shape[0]
                           if len(shape) == 3 else len(tif.pages))
        except Exception:  # noqa: BLE001
            pass
    return "?"


def _done(folder: str, i: int) -> Optional[dict]:
    try:
        with open(os.path.join(folder, shard_name(i, "done.json")), encoding="utf-8") as h:
            return json.load(h)
    except (OSError, ValueError):
        return None


def _refuse_inside(dest: str, sources: Sequence[str]) -> None:
    dest = os.path.realpath(dest)
    for source in sources:
        real = os.path.realpath(source)
        if dest == real or dest.startswith(real.rstrip(os.sep) + os.sep) or \
                real.startswith(dest.rstrip(os.sep) + os.sep):
            raise OutputError(f"the shard folder {dest} overlaps the dataset {source}; an "
                              "output never replaces an input: choose a folder outside it")


def pack_plan(ds_cfg, split: str, dest: str, shard_size: int, seed: int = 0,
              known: Optional[dict] = None):
    """``(listing, table in pack order, plan)`` of ``split``; the plan (listing digest,
    seed, size, ``cuts``: first record of every shard and the end) fixes every shard.
    ``known``: a plan made before (an array job's): its cuts are taken when the listing
    is still the same (no image sizes read again), else the dataset changed: one line."""
    location = split_location(ds_cfg, split)
    _refuse_inside(dest, [ds_cfg.path, location])
    listing = scan_split(ds_cfg, split)
    if not len(listing.records):
        raise DatasetError(f"split {split!r} of {ds_cfg.path!r} has no images to pack")
    table = listing.records.take(pack_order(len(listing.records), seed).tolist())
    plan = {"listing_digest": table_digest(table), "seed": seed, "shard_size": shard_size}
    if known is not None:
        if {k: known.get(k) for k in plan} != plan:
            raise DatasetError(f"split {split!r} of {ds_cfg.path!r} changed since the "
                               "packing was planned (its listing differs); run `hpt-hpc "
                               "data shard` again")
        return listing, table, dict(plan, cuts=list(known["cuts"]))
    return listing, table, dict(plan, cuts=cut_points(_sizes(table), shard_size))


def shard_split(ds_cfg, split: str, dest: str, shard_size: int, seed: int = 0,
                shards: Optional[Sequence[int]] = None, log=print,
                known: Optional[dict] = None) -> dict:
    """Pack ``split`` of ``ds_cfg`` into ``dest`` (see the module doc); ``shards``: only
    these shard numbers (an array task; ``[]``: none, only the manifest), the manifest is
    written by the call that finds every shard's ``done.json`` matching the plan and its
    tar of the size recorded there (``missing``: the shards that are not).
    ``known``: the plan :func:`pack_plan` made before (see there).
    Returns the manifest (``kept``/``written``: shard numbers kept or written now)."""
    listing, table, plan = pack_plan(ds_cfg, split, dest, shard_size, seed, known)
    cuts, digest = plan["cuts"], plan["listing_digest"]
    count = len(cuts) - 1
    wanted = range(count) if shards is None else [i for i in shards if 0 <= i < count]
    kept, written, bands = [], [], {}
    for i in wanted:
        done = _done(dest, i)
        tar_path = os.path.join(dest, shard_name(i, "tar"))
        if done and done.get("plan") == _shard_plan(plan, i) and os.path.isfile(tar_path) \
                and file_sha256(tar_path) == done.get("sha256"):
            kept.append(i)
            continue
        seen: Dict[str, int] = {}
        indirect: List[str] = []

        def read(path: str) -> bytes:
            data = _read_bytes(path)
            b = _bands(data, path)
            seen[b] = seen.get(b, 0) + 1
            if not is_direct(data):
                indirect.append(path)
            return data
        with atomic_write(tar_path) as handle, \
                atomic_write(os.path.join(dest, shard_name(i, "idx")), "w") as index:
            info = write_shard(handle, index, table, cuts[i], cuts[i + 1], read)
        info.update(sha256=file_sha256(tar_path), bands=seen, plan=_shard_plan(plan, i),
                    indirect={"count": len(indirect), "examples": indirect[:EXAMPLES]})
        write_text_atomic(os.path.join(dest, shard_name(i, "done.json")), json.dumps(info))
        written.append(i)
        log(f"{split}: {shard_name(i, 'tar')} {info['count']} images, {info['bytes']} bytes")
    dones = [_done(dest, i) for i in range(count)]
    missing = [i for i, d in enumerate(dones) if d is None or d.get("plan") !=
               _shard_plan(plan, i) or _size(os.path.join(dest, shard_name(i, "tar")))
               != d.get("bytes")]
    if missing:
        return {"complete": False, "shards": count, "kept": kept, "written": written,
                "missing": missing}
    indirect = {"count": 0, "examples": []}
    for d in dones:
        for b, n in d.get("bands", {}).items():
            bands[b] = bands.get(b, 0) + n
        indirect["count"] += d["indirect"]["count"]
        indirect["examples"] = (indirect["examples"] + d["indirect"]["examples"])[:EXAMPLES]
    with atomic_write(os.path.join(dest, LISTING)) as handle:
        np.savez(handle, **{n: getattr(table, n) for n in RecordTable.ARRAYS})
    manifest = {
        "format": SHARDS_FORMAT, "source": {"path": os.path.abspath(ds_cfg.path),
                                            "format": ds_cfg.format, "split": split,
                                            "root": table.root},
        "images": len(table), "classes": listing.classes, "labelled": bool(len(table.labels)),
        "multi_label": table.multi_label, "bands": bands, "dali_indirect": indirect,
        "listing_digest": digest,
        "listing_sha256": file_sha256(os.path.join(dest, LISTING)), "seed": seed,
        "shard_size": shard_size,
        "shards": [{"name": shard_name(i, "tar"), "index": shard_name(i, "idx"),
                    "first": cuts[i], "count": d["count"], "bytes": d["bytes"],
                    "sha256": d["sha256"]} for i, d in enumerate(dones)]}
    write_text_atomic(os.path.join(dest, MANIFEST), json.dumps(manifest, indent=1) + "\n")
    return dict(manifest, complete=True, kept=kept, written=written)


def _size(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_size
    except OSError:
        return None


def _shard_plan(plan: dict, i: int) -> dict:
    """What shard ``i`` depends on: the listing, the order and its own cut."""
    return {"listing_digest": plan["listing_digest"], "seed": plan["seed"],
            "first": plan["cuts"][i], "last": plan["cuts"][i + 1]}
