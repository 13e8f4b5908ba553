"""What changes the bits of a CPU result, what pinning the CPU kernels costs, and how far the
quickstart table moves between machines (emulated here by other settings on one machine).

``kernels``: the quickstart's base stage for ``--steps`` steps (the real ``hpt-hpc train``,
one process per setting) under each setting of :data:`KERNEL_SETTINGS`: thread counts,
loader workers, fewer cores, a loaded machine, ``PYTHONHASHSEED``, CPU kernel pins (ATen,
oneDNN, MKL). Per setting: the digest of the query encoder's parameters and whether it
equals the reference's, the final loss, the median step time over ``--rounds`` interleaved
rounds.
``quickstarts``: whole ``hpt-hpc quickstart`` runs under :data:`QUICKSTART_SETTINGS` (other
thread counts = machines with other core counts; kernels pinned to AVX2 = an AVX2-only
CPU), plus finished output folders (``--existing NAME=DIR``) and the tables reported from
other machines (:data:`REPORTED`): per run whether every stage's parameters and every cell
equal the reference's; per table cell the values, their range and standard deviation.
Results: ``benchmarks/results/reproducibility.json`` (sections ``kernels``, ``quickstarts``).
On a shared machine run with ``OMP_WAIT_POLICY=PASSIVE``: runs with more threads than free
cores otherwise stall in spinning OpenMP barriers (40x slower steps); the bits do not change
(entry ``kernels, OMP_WAIT_POLICY=PASSIVE``).
Usage: ``PYTHONPATH=. python benchmarks/reproducibility.py kernels --data-dir data``
       ``PYTHONPATH=. python benchmarks/reproducibility.py quickstarts --data-dir data``
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "reproducibility.json"
HPT = [sys.executable, "-m", "hpt_hpc.cli.main"]
AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}

# name -> env (added), sets (--set), cores (CPU affinity: the first N), load (busy processes)
KERNEL_SETTINGS: Dict[str, dict] = {
    "reference: 1 thread, 1 loader worker": {},
    "same, machine loaded (2 busy processes)": {"load": 2},
    "same, PYTHONHASHSEED=1": {"env": {"PYTHONHASHSEED": "1"}},
    "same, 1 core (affinity)": {"cores": 1},
    "threads: auto (cores - workers)": {"sets": ["compute.threads=null"]},
    "2 threads": {"sets": ["compute.threads=2"]},
    "3 threads": {"sets": ["compute.threads=3"]},
    "4 threads": {"sets": ["compute.threads=4"]},
    "8 threads": {"sets": ["compute.threads=8"]},
    "0 loader workers": {"sets": ["data.workers=0"]},
    "2 loader workers": {"sets": ["data.workers=2"]},
    "ATEN_CPU_CAPABILITY=avx2": {"env": {"ATEN_CPU_CAPABILITY": "avx2"}},
    "ATEN_CPU_CAPABILITY=default": {"env": {"ATEN_CPU_CAPABILITY": "default"}},
    "ONEDNN_MAX_CPU_ISA=AVX2": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX2"}},
    "ONEDNN_MAX_CPU_ISA=AVX512_CORE": {"env": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}},
    "MKL_CBWR=AVX2": {"env": {"MKL_CBWR": "AVX2"}},
    "MKL_CBWR=AVX512": {"env": {"MKL_CBWR": "AVX512"}},
    "all three pinned to AVX2": {"env": AVX2},
    "all three pinned to AVX2, machine loaded": {"env": AVX2, "load": 2},
}
QUICKSTART_SETTINGS: Dict[str, dict] = {
    "reference": {},
    "2 threads": {"sets": ["compute.threads=2"]},
    "3 threads": {"sets": ["compute.threads=3"]},
    "AVX2 kernels": {"env": AVX2},
}
# Tables reported from real other machines (test accuracy %, one decimal).
REPORTED = {
    "README before #22 (AMD EPYC, 2 cores; commit 466b5c8)": {
        "Base/0": 89.1, "HPT/25": 89.8, "HPT/100": 90.0, "HPT/400": 91.3,
        "HPT-BN/25": 89.5, "HPT-BN/100": 89.5, "HPT-BN/400": 91.3,
        "Target/25": 62.7, "Target/100": 69.0, "Target/400": 65.3},
    "issue #22's fresh machine": {
        "Base/0": 89.2, "HPT/25": 89.1, "HPT/100": 90.9, "HPT/400": 93.2,
        "HPT-BN/25": 90.0, "HPT-BN/100": 90.7, "HPT-BN/400": 90.6,
        "Target/25": 61.2, "Target/100": 62.9, "Target/400": 67.2},
}


def _run(cmd: List[str], setting: dict, log: Path) -> float:
    """Run ``cmd`` under the setting (env, affinity, busy processes); seconds taken."""
    env = dict(os.environ, **setting.get("env", {}))
    cores = setting.get("cores")
    affinity = sorted(os.sched_getaffinity(0))[:cores] if cores else None
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(setting.get("load", 0))]
    started = time.time()
    try:
        with open(log, "w") as out:
            subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True,
                           preexec_fn=(lambda: os.sched_setaffinity(0, affinity))
                           if affinity else None)
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    return time.time() - started


def _paths(data_dir: Path) -> List[str]:
    return [f"datasets.{n}.path={data_dir / n}" for n in ("fashion-mnist", "mnist")]


def kernel_run(name: str, setting: dict, out: Path, data_dir: Path, steps: int) -> dict:
    folder = out / f"k{list(KERNEL_SETTINGS).index(name):02d}"
    sets = ["compute.threads=1", *_paths(data_dir), f"output_dir={folder}",
            f"stages.base.iterations={steps}", "tracking.enabled=false", "progress_seconds=0",
            *setting.get("sets", [])]
    cmd = HPT + ["train", "--config", str(ROOT / "configs/quickstart.yaml"), "--stage", "base"]
    for item in sets:
        cmd += ["--set", item]
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
    _run(cmd, setting, out / f"{folder.name}.log")
    result = json.loads((folder / "base" / "result.json").read_text())
    return {k: result[k] for k in ("param_digest", "final_loss", "step_seconds", "threads")}


def kernels(args) -> dict:
    runs: Dict[str, list] = {name: [] for name in KERNEL_SETTINGS
                             if not args.only or name in args.only}
    for _ in range(args.rounds):
        for name in runs:
            runs[name].append(kernel_run(name, KERNEL_SETTINGS[name], args.out, args.data_dir,
                                         args.steps))
            print(name, runs[name][-1], flush=True)
    first = next(iter(KERNEL_SETTINGS))
    reference = (runs.get(first) or [kernel_run(first, KERNEL_SETTINGS[first], args.out,
                                                args.data_dir, args.steps)])[0]["param_digest"]
    rows = {}
    for name, results in runs.items():
        digests = sorted({r["param_digest"] for r in results})
        rows[name] = {"settings": KERNEL_SETTINGS[name], "digests": digests,
                      "same_each_round": len(digests) == 1,
                      "identical_to_reference": digests == [reference],
                      "threads": results[0]["threads"],
                      "final_loss": results[0]["final_loss"],
                      "median_step_seconds": round(statistics.median(
                          r["step_seconds"] for r in results), 4)}
    return {"steps": args.steps, "rounds": args.rounds, "settings": rows}


def _cells(folder: Path) -> Dict[str, float]:
    with open(folder / "results.csv") as handle:
        return {f"{r['method']}/{r['target_steps']}": round(100 * float(r["test_acc"]), 2)
                for r in csv.DictReader(handle)}


def _digests(folder: Path) -> Dict[str, str]:
    """Every stage's parameter digest and final loss, keyed by its folder."""
    found = {}
    for path in sorted(folder.rglob("result.json")):
        data = json.loads(path.read_text())
        if "param_digest" in data:
            found[str(path.parent.relative_to(folder))] = \
                f"{data['param_digest']} loss {data['final_loss']:.6f}"
    return found


def quickstarts(args) -> dict:
    folders = {}
    for name, setting in QUICKSTART_SETTINGS.items():
        if args.only and name not in args.only:
            continue
        folder = args.out / name.replace(" ", "-")
        if not (folder / "results.csv").is_file():
            cmd = HPT + ["quickstart", "--out", str(folder), "--data-dir", str(args.data_dir)]
            for item in setting.get("sets", []):
                cmd += ["--set", item]
            seconds = _run(cmd, setting, args.out / f"{folder.name}.log")
            print(f"{name}: {seconds / 60:.1f} min", flush=True)
        folders[name] = folder
    for item in args.existing:
        name, _, path = item.partition("=")
        folders[name] = Path(path)
    reference = next(iter(folders))
    runs = {}
    for name, folder in folders.items():
        machine = folder / "machine.json"
        runs[name] = {"folder": str(folder), "settings": QUICKSTART_SETTINGS.get(name, {}),
                      "cells": _cells(folder), "stages": _digests(folder),
                      "machine": json.loads(machine.read_text()) if machine.is_file() else None}
    ref = runs[reference]
    for run in runs.values():
        run["identical_to_reference"] = {"cells": run["cells"] == ref["cells"],
                                         "stages": run["stages"] == ref["stages"]}
    return {"reference": reference, "runs": runs,
            "spread_here": _spread({n: r["cells"] for n, r in runs.items()}),
            "spread_with_reported": _spread({**{n: r["cells"] for n, r in runs.items()},
                                             **REPORTED}),
            "reported": REPORTED}


def _spread(tables: Dict[str, Dict[str, float]]) -> Dict[str, dict]:
    """Per cell: values of distinct runs (tables equal in every shared cell count once),
    their range and standard deviation."""
    distinct: Dict[str, Dict[str, float]] = {}
    for name, cells in tables.items():
        if not any(all(cells[c] == seen[c] for c in cells.keys() & seen.keys())
                   for seen in distinct.values()):
            distinct[name] = cells
    out = {}
    for cell in next(iter(tables.values())):
        values = [t[cell] for t in distinct.values() if cell in t]
        out[cell] = {"values": values, "min": min(values), "max": max(values),
                     "range": round(max(values) - min(values), 2),
                     "std": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}
    return {"distinct_runs": list(distinct), "cells": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["kernels", "quickstarts"])
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "reproducibility")
    parser.add_argument("--steps", type=int, default=60, help="kernels: base stage steps")
    parser.add_argument("--rounds", type=int, default=3, help="kernels: interleaved rounds")
    parser.add_argument("--only", action="append", default=[],
                        help="run only these settings (repeatable)")
    parser.add_argument("--label", help="key of the results entry (default: kernels or "
                                        "quickstarts)")
    parser.add_argument("--existing", action="append", default=[], metavar="NAME=DIR",
                        help="quickstarts: include a finished quickstart output folder")
    args = parser.parse_args()
    args.data_dir, args.out = args.data_dir.resolve(), args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    result = kernels(args) if args.what == "kernels" else quickstarts(args)
    import torch
    from hpt_hpc.device import machine_facts
    result.update(date=time.strftime("%Y-%m-%d %H:%M"),
                  machine=machine_facts(torch.device("cpu"), 1, 1))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.label or args.what] = result
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
