"""Tar shards against an image folder on the same images (#28): files opened and bytes read
per epoch, start-up to the first batch, images/s, peak memory, per backend.

Images: ``--images`` RGB JPEGs (quality 90) of side ``--side``, each three real
Fashion-MNIST images (bicubic-upscaled) as R, G and B, in 10 class folders; packed with
``hpt-hpc data shard`` into ``--shards`` shards. One pretraining epoch (two MoCo-v2 views
at ``--crop``, batch ``--batch``) per case, everything in one process (torchvision:
``num_workers=0``; DALI: one CPU thread), so ``/proc/self/io`` counts every byte read;
``openat`` calls of files below the dataset folder are counted by ``strace -f`` in a
second run of each case (its time is not used). Start-up: listing, loader construction
and the first batch (imports excluded). Warm page cache (the sandbox cannot drop it): the opens, not the seconds, are
what a cluster filesystem charges for.

    python benchmarks/shards.py --images 5000 --out benchmarks/results
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def make_dataset(folder: Path, count: int, side: int) -> None:
    """``count`` RGB JPEGs in ``folder/train/<class>/``."""
    import numpy as np
    from PIL import Image
    from hpt_hpc.data.prepare import _load_fashion_mnist
    images, labels = _load_fashion_mnist()["train"]
    for i in range(count):
        planes = [Image.fromarray(images[(3 * i + k) % len(images)]).resize(
            (side, side), Image.BICUBIC) for k in range(3)]
        target = folder / "train" / str(int(labels[(3 * i) % len(labels)]))
        target.mkdir(parents=True, exist_ok=True)
        Image.merge("RGB", planes).save(target / f"{i:07d}.jpg", quality=90)
    del np


def _rchar() -> int:
    """Bytes this process has read so far (every file and pipe)."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["rchar"])


def one_epoch(path: str, fmt: str, backend: str, crop: int, batch: int,
              workers: int = 0) -> dict:
    """One epoch in this process: the figures of one case."""
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
    loader = build_pretrain_loader(table, cfg.augment, cfg.data, batch, seed=0)
    stream = iter(loader)
    next(stream)
    first = time.perf_counter() - started
    begun = time.perf_counter()
    for _ in range(loader.steps_per_epoch - 1):
        next(stream)
    seconds = time.perf_counter() - begun
    return {"first_batch_s": round(first, 3),
            "images_per_s": round((loader.steps_per_epoch - 1) * batch / seconds, 1),
            "images": loader.steps_per_epoch * batch, "read_mb": round((_rchar() - read_before) / 1e6, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "peak_worker_rss_mb": round(resource.getrusage(
                resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1) if workers else None}


def _case(args, path, fmt, backend, strace=False) -> dict:
    cmd = [sys.executable, __file__, "--case", path, fmt, backend, "--crop", str(args.crop),
           "--batch", str(args.batch), "--workers", str(args.workers)]
    if strace:
        log = Path(args.work) / f"strace-{fmt}-{backend}.txt"
        cmd = ["strace", "-f", "-e", "trace=openat,open", "-o", str(log)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if strace:  # the opens of files below the dataset (not of Python's imports)
        result = {"opens": sum(1 for line in log.read_text().splitlines()
                               if f'"{path}/' in line and "ENOENT" not in line)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--crop", type=int, default=56)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--backends", default="torchvision,dali")
    parser.add_argument("--work", default="/tmp/hpt-shards-bench")
    parser.add_argument("--out", default=None, help="folder for shards-<time>.json")
    parser.add_argument("--workers", type=int, default=0,
                        help="torchvision loader workers (>0: bytes read are the main "
                             "process's only; peak_worker_rss_mb is the largest worker's)")
    parser.add_argument("--case", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_epoch(*args.case, args.crop, args.batch, args.workers)))
        return
    work = Path(args.work)
    folder, shards = work / f"folder-{args.images}", work / f"shards-{args.images}"
    if not (folder / "train").is_dir():
        make_dataset(folder, args.images, args.side)
    size = sum(p.stat().st_size for p in folder.rglob("*.jpg"))
    from types import SimpleNamespace
    from hpt_hpc.data.shards import shard_split
    began = time.perf_counter()
    ds = SimpleNamespace(path=str(folder), format="imagefolder", splits={"train": "train"},
                         max_images=None)
    manifest = shard_split(ds, "train", str(shards / "train"), -(-size // args.shards),
                           log=lambda line: None)
    packing = time.perf_counter() - began
    results = []
    for backend in args.backends.split(","):
        for fmt, path in (("imagefolder", folder), ("shards", shards)):
            row = {"backend": backend, "format": fmt,
                   **_case(args, str(path), fmt, backend),
                   **_case(args, str(path), fmt, backend, strace=True)}
            results.append(row)
            print(json.dumps(row), flush=True)
    report = {"images": args.images, "side": args.side, "crop": args.crop,
              "workers": args.workers,
              "batch": args.batch, "jpeg_mb": round(size / 1e6, 1),
              "shards": len(manifest["shards"]), "packing_s": round(packing, 2),
              "machine": f"{platform.processor() or platform.machine()}, "
                         f"{os.cpu_count()} cores (shared)", "results": results}
    print(json.dumps(report, indent=1))
    if args.out:
        out = Path(args.out) / f"shards-{time.strftime('%Y%m%d-%H%M%S')}.json"
        out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
