"""Launch latency and CPU DDP throughput on the one-node dev cluster.

1. Seconds from running ``hpt-hpc launch`` (a fresh CLI process) to the job's first
   training step, read from the job log's timestamp (goal: under 15 s).
2. MoCo-v2 step throughput (images/s) of a 1-rank and a 2-rank (gloo) DDP job at the same
   global batch, from the engine's median step time.

Needs the dev cluster (``bash slurm/dev-cluster/start.sh``; the script starts it). Writes
``benchmarks/results/launch.json`` and prints a Markdown table.
Usage: ``.venv/bin/python benchmarks/launch_latency.py [--repeats 3]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "launch.json"
STEP_LINE = re.compile(r"^(\S+ \S+) INFO hpt_hpc\.train\.engine: stage \w+: step 1/", re.M)


def start_cluster() -> None:
    out = subprocess.run(["bash", str(ROOT / "slurm/dev-cluster/start.sh")], check=True,
                         capture_output=True, text=True).stdout
    conf = [ln.split("=", 1)[1] for ln in out.splitlines() if ln.startswith("export SLURM_CONF=")]
    os.environ["SLURM_CONF"] = conf[-1]


def write_config(folder: Path, data_dir: Path, iterations: int, batch: int) -> Path:
    cfg = {
        "name": "bench", "output_dir": str(folder / "out"), "device": "cpu",
        "datasets": {"mnist": {"path": str(data_dir)}},
        "model": {"arch": "resnet18", "width": 0.25, "small_stem": True, "stem_stride": 2,
                  "in_channels": 1},
        "moco": {"queue_size": 1024, "momentum": 0.99, "dim": 128},
        "optim": {"lr": 0.06, "batch_size": batch, "iterations": iterations},
        "augment": {"flip": {"enabled": False}, "grayscale": {"enabled": False},
                    "color_jitter": {"saturation": 0.0, "hue": 0.0}},
        "data": {"image_size": 32, "channels": 1, "mean": [0.5], "std": [0.5], "workers": 0},
        "checkpoint": {"every": 0},
        "stages": {"target": {"dataset": "mnist", "variant": "scratch"}},
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def launch_cli(config: Path, *flags: str) -> dict:
    cmd = [str(Path(sys.executable).with_name("hpt-hpc")), "launch", "--config", str(config),
           "--stage", "target", "--profile", "dev", *flags]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads((config.parent / "out/launches/latest.json").read_text())


def wait_result(record: dict) -> list:
    sys.path.insert(0, str(ROOT))
    from hpt_hpc.launch.record import JobEntry, LaunchRecord
    rec = LaunchRecord(**{**record, "jobs": [JobEntry(**j) for j in record["jobs"]]})
    return rec.job(rec.jobs[0]).results()


def first_step_latency(folder: Path, data_dir: Path) -> float:
    config = write_config(folder, data_dir, iterations=10, batch=64)
    started = time.time()
    record = launch_cli(config)
    wait_result(record)
    log = Path(record["jobs"][0]["stderr"]).read_text()
    stamp = STEP_LINE.search(log)
    if not stamp:
        raise RuntimeError(f"no first-step line in the job log:\n{log[-2000:]}")
    first = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return first - started


def ddp_throughput(folder: Path, data_dir: Path, ranks: int, batch: int = 64) -> dict:
    config = write_config(folder, data_dir, iterations=60, batch=batch)
    cpus = str(max(1, (os.cpu_count() or 2) // ranks))  # same cores for both layouts
    results = wait_result(launch_cli(config, "--tasks-per-node", str(ranks),
                                     "--cpus-per-task", cpus))
    step = max(r["step_seconds"] for r in results)
    return {"ranks": ranks, "global_batch": batch, "step_seconds": step,
            "images_per_s": batch / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from hpt_hpc.data.prepare import prepare_dataset
    start_cluster()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = tmp / "mnist"
        prepare_dataset("mnist", data_dir)
        latencies = []
        for i in range(args.repeats):
            (tmp / f"lat{i}").mkdir()
            latencies.append(first_step_latency(tmp / f"lat{i}", data_dir))
        ddp = []
        for ranks in (1, 2, 1, 2):
            folder = tmp / f"ddp{len(ddp)}"
            folder.mkdir()
            ddp.append(ddp_throughput(folder, data_dir, ranks))
    by_ranks = {r: statistics.median(d["images_per_s"] for d in ddp if d["ranks"] == r)
                for r in (1, 2)}
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d"),
        "launch_to_first_step_s": latencies,
        "launch_to_first_step_median_s": statistics.median(latencies),
        "ddp_runs": ddp,
        "ddp_images_per_s": by_ranks,
        "ddp_2_vs_1_ratio": by_ranks[2] / by_ranks[1],
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2))
    print(f"| launch → first step (median of {args.repeats}) | "
          f"{result['launch_to_first_step_median_s']:.1f} s |")
    print(f"| DDP, 1 rank (gloo, CPU) | {by_ranks[1]:.0f} images/s |")
    print(f"| DDP, 2 ranks (gloo, CPU) | {by_ranks[2]:.0f} images/s "
          f"({result['ddp_2_vs_1_ratio']:.2f}x) |")
    print(f"results: {RESULTS}")


if __name__ == "__main__":
    main()
