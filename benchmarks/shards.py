"""Tar shards against an image folder on the same images (#28): files opened and bytes read
per epoch, start-up to the first batch, images/s, peak memory per rank and per worker.

Images: ``--images`` RGB JPEGs (quality 90) of side ``--side``, each three real
Fashion-MNIST images (bicubic-upscaled) as R, G and B, in 10 class folders; beyond
``--pool`` distinct ones, image *i* is a hard link to image *i* mod pool (a path of its own,
the same bytes: how 1,281,167 images fit the disk and minutes). Packed with the toolkit's
``shard_split`` into ~``--shards`` shards (the bytes of every path are read and written).
Dataset, shards and packing record stay in ``--work`` and are reused by a rerun.

Each case (backend ``torchvision`` in process, ``torchvision:W`` with W loader workers,
``dali`` one CPU thread; folder or shards) runs in a fresh process: start-up (listing,
loader, first batch; imports excluded), then ``--batches`` batches (0: the rest of the
epoch) for images/s; peak RSS (``VmHWM``) of the rank and its largest worker. A second run
under ``strace -f`` counts the ``openat`` calls of files below the dataset, before the first
batch and between two marker opens around the measured batches; a window of batches
implies the whole epoch's opens (:func:`epoch_opens`). ``--read-from`` reads the cases
from another path to the same files (benchmarks/netfs.sh: an sshfs mount with latency).
``--index`` adds the folder's start-up from ``hpt-hpc data index``. Warm page cache (the
sandbox cannot drop it): the opens, not the seconds, are what a cluster filesystem charges.

    python benchmarks/shards.py --images 5000 --out benchmarks/results
    python benchmarks/shards.py --images 1281167 --batches 50 --index \
        --backends torchvision,torchvision:2,dali --work /tmp/hpt-shards-bench --out ...
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_dataset(folder: Path, count: int, side: int, pool: int) -> None:
    """``count`` RGB JPEGs in ``folder/train/<class>/``: the first ``pool`` made, image
    ``i`` beyond them a hard link to image ``i % pool`` (a distinct path, the same bytes)."""
    from PIL import Image
    from hpt_hpc.data.prepare import _load_fashion_mnist
    images, labels = _load_fashion_mnist()["train"]
    made = []
    for i in range(min(count, pool)):
        planes = [Image.fromarray(images[(3 * i + k) % len(images)]).resize(
            (side, side), Image.BICUBIC) for k in range(3)]
        target = folder / "train" / str(int(labels[(3 * i) % len(labels)]))
        target.mkdir(parents=True, exist_ok=True)
        Image.merge("RGB", planes).save(target / f"{i:07d}.jpg", quality=90)
        made.append(target)
    for i in range(len(made), count):
        os.link(made[i % pool] / f"{i % pool:07d}.jpg", made[i % pool] / f"{i:07d}.jpg")
    past = time.time() - 3600  # a listing index is trusted for folders older than 2 s
    for sub in [folder / "train", *(folder / "train").iterdir()]:
        os.utime(sub, (past, past))


def _rchar() -> int:
    """Bytes this process has read so far (every file and pipe)."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["rchar"])


def _peak_rss_mb(pid: str = "self") -> float:
    """A process's peak resident memory (``VmHWM``), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def _mark(path: str, name: str) -> None:
    """A failed open of ``path/.bench-<name>``: a marker in the strace log."""
    try:
        open(f"{path}/.bench-{name}", "rb").close()
    except OSError:
        pass


def one_epoch(path: str, fmt: str, backend: str, crop: int, batch: int,
              workers: int = 0, batches: int = 0, warmup: int = 0) -> dict:
    """Start-up to the first batch, ``warmup`` batches untimed (what the loader prefetched
    meanwhile), then ``batches`` more (0: the rest of the epoch), in this process."""
    from tiny import tiny_config
    from hpt_hpc.data import build_pretrain_loader, list_split
    import importlib
    for module in ("loader", "shard_loader") + (("dali_loader", "dali_shards")
                                                 if backend == "dali" else ()):
        importlib.import_module(f"hpt_hpc.data.{module}")  # imports are not timed
    read_before = _rchar()
    started = time.perf_counter()
    cfg = tiny_config(Path("/tmp"), {"d": path}, {"target": {"dataset": "d"}},
                      data={"backend": backend, "device": "cpu", "image_size": crop,
                            "channels": 3,
                            "workers": workers if backend == "torchvision" else 1},
                      model={"arch": "resnet18", "in_channels": 3})
    cfg.datasets["d"].format = fmt
    table, _ = list_split(cfg.datasets["d"], "train")
    listed = time.perf_counter() - started
    loader = build_pretrain_loader(table, cfg.augment, cfg.data, batch, seed=0)
    stream = iter(loader)
    next(stream)
    first = time.perf_counter() - started
    for _ in range(warmup):
        next(stream)
    steps = min(batches or loader.steps_per_epoch, loader.steps_per_epoch - 1 - warmup)
    _mark(path, "window-begin")
    begun = time.perf_counter()
    for _ in range(steps):
        next(stream)
    seconds = time.perf_counter() - begun
    _mark(path, "window-end")
    import psutil
    children = [_peak_rss_mb(str(c.pid)) for c in psutil.Process().children(recursive=True)]
    return {"list_s": round(listed, 3), "first_batch_s": round(first, 3),
            "images_per_s": round(steps * batch / seconds, 1), "measured_images": steps * batch,
            "epoch_images": loader.steps_per_epoch * batch,
            "read_mb": round((_rchar() - read_before) / 1e6, 2),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_worker_rss_mb": max(children) if children else None,
            "loader_workers": len(children)}


def count_opens(log: str, path: str) -> dict:
    """Opens of files below ``path`` in an ``strace -f -e openat`` log, before the first
    batch (start-up) and between the window markers; ``.tar`` opens and distinct tars."""
    counts = {"startup": 0, "window": 0, "tar": 0}
    tars, part = set(), "startup"
    for line in log.splitlines():
        if f'"{path}/' not in line:
            continue
        if "/.bench-window-" in line:
            part = "window" if "window-begin" in line else "after"
            continue
        if "ENOENT" in line or part == "after":
            continue
        counts[part] += 1
        name = line.split(f'"{path}/', 1)[1].split('"', 1)[0]
        if name.endswith(".tar"):
            counts["tar"] += 1
            tars.add(name)
    counts["distinct_tars"] = len(tars)
    return counts


def epoch_opens(counts: dict, first_images: int, window_images: int, epoch_images: int,
                shards: int = 0) -> int:
    """The opens of one whole epoch implied by a window of it. A folder: the start-up's
    opens plus the window's rate per image over the rest of the epoch. Shards: the
    start-up's opens other than tars, plus every shard opened as often as the tars seen."""
    if not shards:
        return round(counts["startup"] + counts["window"] / window_images
                     * (epoch_images - first_images))
    per_tar = counts["tar"] / counts["distinct_tars"] if counts["distinct_tars"] else 1
    startup_tars = counts["tar"] - counts["window"]  # a window opens nothing but tars
    return round(counts["startup"] - startup_tars + per_tar * shards)


def _case(args, path, fmt, backend, workers, strace=False) -> dict:
    cmd = [sys.executable, __file__, "--case", path, fmt, backend, "--crop", str(args.crop),
           "--batch", str(args.batch), "--workers", str(workers),
           "--batches", str(args.batches), "--warmup", str(args.warmup)]
    if strace:
        log = Path(args.work) / f"strace-{fmt}-{backend}-{workers}.txt"
        cmd = ["strace", "-f", "--seccomp-bpf", "-e", "trace=openat,open", "-o", str(log)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    if out.returncode:
        raise SystemExit(f"case {fmt} {backend} failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if strace:  # the opens of files below the dataset (not of Python's imports)
        counts = count_opens(log.read_text(), path)
        log.unlink()
        result = {"opens": counts, "timing_under_strace": result}
    return result


def prepare(args, work: Path) -> tuple:
    """The folder and its shards in ``work`` (made once; a rerun reuses both), and the
    packing record."""
    folder, shards = work / f"folder-{args.images}", work / f"shards-{args.images}"
    record = work / f"packing-{args.images}.json"
    if not (folder / "train").is_dir():
        made = time.perf_counter()
        make_dataset(folder, args.images, args.side, args.pool)
        print(f"made {args.images} images in {time.perf_counter() - made:.0f} s", flush=True)
    if not record.is_file():
        from types import SimpleNamespace
        from hpt_hpc.data.shards import shard_split
        size = sum(e.stat().st_size for d in os.scandir(folder / "train")
                   for e in os.scandir(d.path))
        began = time.perf_counter()
        ds = SimpleNamespace(path=str(folder), format="imagefolder",
                             splits={"train": "train"}, max_images=None)
        manifest = shard_split(ds, "train", str(shards / "train"), -(-size // args.shards),
                               log=lambda line: None)
        record.write_text(json.dumps({"packing_s": round(time.perf_counter() - began, 2),
                                      "jpeg_mb": round(size / 1e6, 1),
                                      "shards": len(manifest["shards"]),
                                      "shards_mb": round(sum(s["bytes"] for s in manifest[
                                          "shards"]) / 1e6, 1)}))
    return folder, shards, json.loads(record.read_text())


def _index_case(args, folder: Path, read: Path) -> dict:
    """``hpt-hpc data index`` on the folder, then start-up from the index (torchvision, in
    process); the index is removed again."""
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hpt_hpc.cli.main", "data", "index", str(folder)],
                   check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    indexing = time.perf_counter() - began
    saved = args.batches
    args.batches = 1
    try:
        row = _case(args, str(read / folder.name), "imagefolder", "torchvision", 0)
    finally:
        args.batches = saved
        for index in folder.glob(".*.hpt-index.npz"):
            index.unlink()
    return {"backend": "torchvision", "workers": 0, "format": "imagefolder, indexed",
            "index_s": round(indexing, 2), "list_s": row["list_s"],
            "first_batch_s": row["first_batch_s"], "peak_rss_mb": row["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--pool", type=int, default=5000,
                        help="distinct JPEGs; the other images are hard links to them")
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--crop", type=int, default=56)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=0,
                        help="measure this many batches after the first (0: the epoch)")
    parser.add_argument("--warmup", type=int, default=0,
                        help="untimed batches after the first (prefetched at start-up)")
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--backends", default="torchvision,dali",
                        help="comma-separated; torchvision:W runs W loader workers")
    parser.add_argument("--work", default="/tmp/hpt-shards-bench")
    parser.add_argument("--read-from", default=None,
                        help="read the cases from this copy of --work (e.g. a mount of it)")
    parser.add_argument("--index", action="store_true",
                        help="also start-up of the folder from `hpt-hpc data index`")
    parser.add_argument("--no-strace", action="store_true", help="no second run for opens")
    parser.add_argument("--label", default="local disk")
    parser.add_argument("--tag", default="", help="in the result file's name")
    parser.add_argument("--mount-delay-ms", type=float, default=None)
    parser.add_argument("--prepare-only", action="store_true")
    parser.add_argument("--out", default=None, help="folder for shards-<time>.json")
    parser.add_argument("--workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--case", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_epoch(*args.case, args.crop, args.batch, args.workers,
                                   args.batches, args.warmup)))
        return
    work = Path(args.work)
    folder, shards, packing = prepare(args, work)
    if args.prepare_only:
        return
    read = Path(args.read_from or work)
    results = []
    for spec in args.backends.split(","):
        backend, _, workers = spec.partition(":")
        for fmt, path in (("imagefolder", read / folder.name), ("shards", read / shards.name)):
            row = {"backend": backend, "workers": int(workers or 0), "format": fmt,
                   **_case(args, str(path), fmt, backend, int(workers or 0))}
            if not args.no_strace:
                row.update(_case(args, str(path), fmt, backend, int(workers or 0), True))
                row["epoch_opens"] = epoch_opens(
                    row["opens"], args.batch * (1 + args.warmup), row["measured_images"],
                    row["epoch_images"],
                    packing["shards"] if fmt == "shards" else 0)
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.index:
        results.append(_index_case(args, folder, read))
        print(json.dumps(results[-1]), flush=True)
    report = {"images": args.images, "distinct_jpegs": min(args.pool, args.images),
              "side": args.side, "crop": args.crop, "batch": args.batch,
              "measured": (f"{args.batches} batches" if args.batches else
                           "the rest of the epoch") + f" after the first and {args.warmup} untimed",
              "filesystem": args.label,
              "added_delay_ms_each_way": args.mount_delay_ms, **packing,
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} cores (shared)", "results": results}
    print(json.dumps(report, indent=1))
    if args.out:
        tag = f"{args.tag}-" if args.tag else ""
        out = Path(args.out) / f"shards-{tag}{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
