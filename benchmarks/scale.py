"""Cost of a dataset as it grows: listing, start-up to the first batch, memory per rank and
per loader worker, for ImageFolder trees and a file list of up to ImageNet's 1,281,167
training images.

Trees are real: ``<n>/train/<class>/<class>_<i>.JPEG`` in 1,000 class folders, named like
ImageNet's files, every file a hard link to one of a few small real JPEGs (80², ≤ 50,000 links
each: a 1.28M-image tree costs ~100 MB of folder entries). The file list names the same files
(``train.csv``, paths relative to it). Every measurement runs in a fresh process:

* ``list``: import, then list the split (``list_split``: what a stage does) — seconds and
  the rank's RSS growth; then a forked child (what a loader worker is) reads every
  record once, as one epoch of a worker's accesses would, and reports its private memory
  (USS): pages it had to copy from the rank;
* ``index``: ``hpt-hpc data index`` (list + save), then ``list`` again, now from the index;
* ``torchvision`` / ``dali``: process start to the first two-view batch of the real
  pretraining loader (batch 64, 64² crops, 2 workers/threads), and RSS per rank/worker.

``--code DIR`` imports ``hpt_hpc`` from another checkout (e.g. a worktree of an older
commit) for before/after figures. Growth is fitted (least squares, ``a + b·n``) over the
measured sizes and the 1.28M figure is measured, not extrapolated, where the disk allows.
This sandbox cannot drop the OS page cache: "cold" here means a fresh process with the
folders already in the cache (a first listing on a parallel filesystem is slower).
Results: ``benchmarks/results/scale.json``.
Usage: ``.venv/bin/python benchmarks/scale.py [--sizes 10000 100000 300000 1281167]``
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

STARTED = time.time()
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "scale.json"
CLASSES = 1000
IMAGENET = 1_281_167
LINKS = 50_000


def make_tree(work: Path, n: int) -> Path:
    """The tree and file list of ``n`` images (kept across runs: made once)."""
    root = work / str(n)
    if (root / "train.csv").is_file():
        return root
    import numpy as np
    from PIL import Image
    (root / "sources").mkdir(parents=True, exist_ok=True)
    sources = []
    rng = np.random.default_rng(0)
    for k in range(max(8, n // LINKS + 1)):  # a file takes at most ~65,000 links
        path = root / "sources" / f"{k}.JPEG"
        Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(path)
        sources.append(path)
    lines = []
    for c in range(CLASSES):
        name = f"n{c:08d}"
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
        for i in range(c, n, CLASSES):
            rel = f"train/{name}/{name}_{i}.JPEG"
            os.link(sources[i % len(sources)], root / rel)
            lines.append(f"{rel},{c}\n")
    (root / "train.csv").write_text("".join(lines))
    past = time.time() - 3600  # an index is only trusted for folders older than 2 s
    for folder in [root / "train", *(root / "train").iterdir()]:
        os.utime(folder, (past, past))
    return root


def rss_mb(pid=None) -> float:
    import psutil
    return psutil.Process(pid).memory_info().rss / 2**20


def child(spec: dict) -> dict:
    """One measurement in this (fresh) process; see the module docstring."""
    from types import SimpleNamespace
    t0 = time.time()
    from hpt_hpc.data import list_split
    ds = SimpleNamespace(path=spec["root"], format=spec["format"],
                         splits={"train": "train.csv" if spec["format"] == "filelist"
                                 else "train"}, max_images=None)
    out = {"import_s": time.time() - t0, "rss_before_mb": rss_mb()}
    if spec["mode"] == "index":
        from hpt_hpc.data import index_split
        t0 = time.time()
        index_split(ds, "train")
        return {**out, "index_write_s": time.time() - t0}
    t0 = time.time()
    records, _ = list_split(ds, "train")
    out.update(list_s=time.time() - t0, images=len(records),
               rss_list_mb=rss_mb() - out["rss_before_mb"],
               representation=type(records).__name__)
    if spec["mode"] == "list":
        out["worker_uss_after_epoch_mb"] = _forked_epoch(records)
        return out
    from hpt_hpc.config.schema import AugmentConfig, DataConfig
    data = DataConfig(image_size=64, workers=2, backend=spec["mode"])
    if spec["mode"] == "dali":
        from hpt_hpc.data.dali_loader import DaliPretrainLoader as Loader
    else:
        from hpt_hpc.data.loader import PretrainLoader as Loader
    loader = Loader(records, AugmentConfig(), data, batch_size=64, seed=0)
    next(iter(loader))
    import psutil
    out.update(first_batch_s=time.time() - STARTED, rss_rank_mb=rss_mb(),
               worker_rss_mb=[round(rss_mb(c.pid), 1)
                              for c in psutil.Process().children(recursive=True)],
               worker_uss_mb=[round(c.memory_full_info().uss / 2**20, 1)
                              for c in psutil.Process().children(recursive=True)])
    return out


def _forked_epoch(records) -> float:
    """USS of a forked child after it read every record once (one worker's epoch)."""
    import multiprocessing as mp
    import psutil
    ctx = mp.get_context("fork")
    parent, conn = ctx.Pipe()

    def touch():
        count = 0
        for i in range(len(records)):
            record = records[i]
            count += len(record.path) + len(record.labels)
        conn.send(psutil.Process().memory_full_info().uss / 2**20)

    proc = ctx.Process(target=touch)
    proc.start()
    uss = parent.recv()
    proc.join()
    return uss


def measure(spec: dict, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env,
                         capture_output=True, text=True, timeout=1800, cwd=code)
    if out.returncode:
        raise SystemExit(f"{spec}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit(points) -> dict:
    """Least-squares ``seconds = a + b·n`` and its value at ImageNet's size."""
    import numpy as np
    n = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    b, a = np.polyfit(n, y, 1) if len(points) > 1 else (y[0] / n[0], 0.0)
    return {"a": round(float(a), 3), "b_per_million": round(float(b) * 1e6, 3),
            "at_1281167": round(float(a + b * IMAGENET), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[10_000, 100_000, 300_000, IMAGENET])
    parser.add_argument("--work", type=Path, default=Path("/tmp/hpt-scale"))
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--label", default="now")
    parser.add_argument("--modes", nargs="+",
                        default=["list", "index", "torchvision", "dali"])
    parser.add_argument("--child")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        t0 = time.time()
        root = make_tree(args.work, n)
        print(f"{n}: tree ready ({time.time() - t0:.0f} s)", flush=True)
        for index_file in root.glob(".train*.hpt-index.npz"):
            index_file.unlink()
        for fmt in ("imagefolder", "filelist"):
            for mode in args.modes:
                spec = {"root": str(root), "format": fmt, "mode": mode}
                row = {"images": n, "format": fmt, "mode": mode, **measure(spec, args.code)}
                if mode == "index":  # and the listing that follows, from the index
                    row.update({f"indexed_{k}": v for k, v in
                                measure({**spec, "mode": "list"}, args.code).items()
                                if k in ("list_s", "rss_list_mb", "worker_uss_after_epoch_mb")})
                    for index_file in root.glob(".train*.hpt-index.npz"):
                        index_file.unlink()
                rows.append(row)
                print(json.dumps(row), flush=True)
    listing = [r for r in rows if r["mode"] == "list" and r["format"] == "imagefolder"]
    result = {"label": args.label, "code": str(args.code), "rows": rows,
              "fit_list_s": fit([(r["images"], r["list_s"]) for r in listing]),
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "date": time.strftime("%Y-%m-%d %H:%M")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.label] = result
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(result["fit_list_s"]))


if __name__ == "__main__":
    main()
