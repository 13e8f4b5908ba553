"""Checkpoint storage per sweep unit: a small sweep of the quickstart model (upstream base
+ HPT and Target units, MLflow on, debug executor) is run for real; every ``*.pt`` below
its output folder is counted twice — apparent bytes (what ``ls`` adds up) and unique bytes
(one count per inode: hard links share their bytes) — against the unique checkpoints the
sweep produced (one per stage). The ResNet-50 / K = 65,536 figure multiplies a real saved
checkpoint of that model (with optimiser state) by the measured ratio.
Results: ``benchmarks/results/checkpoint_storage.json``.
Usage: ``.venv/bin/python benchmarks/checkpoint_storage.py [--steps 20]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "checkpoint_storage.json"


def storage(folder: Path) -> dict:
    """Apparent and unique bytes of every ``*.pt`` below ``folder``, and how many."""
    apparent, inodes = 0, {}
    files = [p for p in folder.rglob("*.pt") if p.is_file()]  # (a cache folder may end in .pt)
    for path in files:
        st = path.stat()
        apparent += st.st_size
        inodes[(st.st_dev, st.st_ino)] = st.st_size
    return {"files": len(files), "apparent_bytes": apparent,
            "unique_bytes": sum(inodes.values()), "unique_files": len(inodes)}


def run_sweep_of(work: Path, steps: int) -> dict:
    import yaml

    from hpt_hpc.data.prepare import prepare_dataset
    from hpt_hpc.experiments.sweep import run_sweep
    from hpt_hpc.launch.options import build_options
    from hpt_hpc.plan.experiment import load_experiment
    for name in ("fashion-mnist", "mnist"):
        prepare_dataset(name, work / name, limit=256)
    experiment = {
        "name": "storage", "config": str(ROOT / "configs" / "quickstart.yaml"),
        "datasets": {n: {"path": str(work / n)} for n in ("fashion-mnist", "mnist")},
        "output_dir": str(work / "out"),
        "upstream": {"base": {"dataset": "fashion-mnist", "iterations": steps}},
        "studies": {"s": {"method": ["HPT", "Target"], "dataset": ["mnist"],
                          "steps": [steps]}},
        "references": False}
    path = work / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment))
    spec = load_experiment(str(path), ["data.workers=0", "progress_seconds=0",
                                       f"checkpoint.every={max(1, steps // 2)}"])
    plan, _ = run_sweep(spec, build_options(None, executor="debug"))
    stages = len(plan.upstream) + len(plan.pretrain)
    return {"stages": stages, **storage(work / "out")}


def resnet50_checkpoint_bytes(work: Path) -> int:
    """Size of a real saved ResNet-50 MoCo-v2 checkpoint (K = 65,536, SGD momentum)."""
    import torch

    from hpt_hpc.models import save_checkpoint_atomic, stage_checkpoint
    from hpt_hpc.ssl import MoCo
    model = MoCo(arch="resnet50", dim=128, mlp=True, mlp_hidden=2048, queue_size=65536)
    optimizer = torch.optim.SGD(model.encoder_q.parameters(), lr=0.03, momentum=0.9)
    for p in model.encoder_q.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # creates the momentum buffers a real checkpoint holds
    path = work / "r50.pt"
    save_checkpoint_atomic(stage_checkpoint(model, optimizer, 1, 1, "target", "full", None,
                                            {}, {}, None), str(path))
    return path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hpt-storage-"))
    sweep = run_sweep_of(work, args.steps)
    per_checkpoint = sweep["apparent_bytes"] / sweep["stages"]
    ratio = sweep["unique_bytes"] / (sweep["unique_bytes"] / sweep["unique_files"]
                                     * sweep["stages"])
    r50 = resnet50_checkpoint_bytes(work)
    result = {**sweep, "apparent_per_stage_bytes": round(per_checkpoint),
              "unique_over_checkpoints": round(ratio, 2),
              "resnet50_k65536_checkpoint_bytes": r50,
              "resnet50_k65536_unique_per_unit_bytes": round(r50 * ratio),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
              "date": time.strftime("%Y-%m-%d %H:%M"), "steps": args.steps}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
