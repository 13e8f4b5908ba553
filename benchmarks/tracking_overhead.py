"""MLflow tracking overhead on the quickstart's stage (ResNet-18 x0.25, 32x32 grey, batch 64).

The same stage runs alternately untracked (``NullTracker``) and tracked (the MLflow tracker on
the embedded sqlite store, default settings: metrics every ``min(50, steps/20)`` steps,
system metrics and a batched send every ``flush_seconds``). Measured:

* per-step overhead, directly: wall time the training thread spends in tracker calls during
  training, plus the CPU time of the tracker's background thread (it competes for the same
  cores), divided by the training steps, as a fraction of the median step time;
* the worst case: the same, with every metric logged at every step;
* fixed cost per stage run (run creation, parameters, config artifact, checkpoint upload and
  registration, closing), in seconds;
* for reference, the median step time of tracked vs untracked runs (wall clock: on a shared
  machine this difference is mostly noise, which is why the direct measure is the headline).

Usage: ``.venv/bin/python benchmarks/tracking_overhead.py [--steps 300 --rounds 2]``;
writes ``benchmarks/results/tracking_overhead.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Meter:
    """Training-thread wall time per tracker method (instrumentation by wrapping)."""

    def __init__(self) -> None:
        self.seconds: dict = {}
        self.calls: dict = {}

    def wrap(self, tracker, names) -> None:
        for name in names:
            original = getattr(tracker, name)

            def timed(*args, _original=original, _name=name, **kwargs):
                started = time.perf_counter()
                try:
                    return _original(*args, **kwargs)
                finally:
                    self.seconds[_name] = self.seconds.get(_name, 0.0) + time.perf_counter() - started
                    self.calls[_name] = self.calls.get(_name, 0) + 1
            setattr(tracker, name, timed)


def thread_cpu_seconds(native_id: int) -> float:
    import psutil
    for thread in psutil.Process().threads():
        if thread.id == native_id:
            return thread.user_time + thread.system_time
    return 0.0


def stage_config(out: Path, data: Path, steps: int, store: Path):
    from hpt_hpc.config import config_from_dict, read_config_dict
    raw = read_config_dict(ROOT / "configs" / "quickstart.yaml")
    raw["datasets"] = {"fashion-mnist": {"path": str(data)}}
    raw["stages"] = {"base": {"dataset": "fashion-mnist", "variant": "full", "iterations": steps}}
    raw["output_dir"] = str(out)
    raw["device"] = "cpu"
    raw["checkpoint"] = {"every": 0}
    raw["tracking"] = {"experiment": "overhead", "uri": f"sqlite:///{store}"}
    return config_from_dict(raw)


def run_once(cfg, tracked: bool, every_step: bool = False) -> dict:
    """One stage run; returns step time and the tracker's costs."""
    from hpt_hpc.plan import stage_plan
    from hpt_hpc.tracking import NullTracker
    from hpt_hpc.train import build_stage_loader, open_stage_tracker, run_stage
    plan = stage_plan(cfg, "base")
    loader = build_stage_loader(plan)
    meter, started = Meter(), time.perf_counter()
    tracker = open_stage_tracker(plan) if tracked else NullTracker()
    setup_seconds = time.perf_counter() - started
    if tracked:
        meter.wrap(tracker, ["log_params", "set_tags", "log_metrics", "log_checkpoint", "flush"])
        cpu_before = thread_cpu_seconds(tracker._thread.native_id)
    on_step = None
    if every_step:
        def on_step(step, loss):
            tracker.log_metrics({"loss_every_step": loss, "lr_every_step": 0.1,
                                 "acc_every_step": 0.5, "seconds_every_step": 0.1}, step)
    result = run_stage(plan, loader, tracker=tracker, on_step=on_step)
    out = {"tracked": tracked, "every_step": every_step, "steps": result.steps,
           "median_step_s": result.step_seconds, "stage_s": result.seconds}
    if tracked:
        background_cpu = thread_cpu_seconds(tracker._thread.native_id) - cpu_before
        started = time.perf_counter()
        tracker.close()
        close_seconds = time.perf_counter() - started
        train_calls = meter.seconds.get("log_metrics", 0.0)
        fixed = (setup_seconds + close_seconds + meter.seconds.get("log_params", 0.0)
                 + meter.seconds.get("set_tags", 0.0) + meter.seconds.get("log_checkpoint", 0.0)
                 + meter.seconds.get("flush", 0.0))
        per_step = (train_calls + background_cpu) / result.steps
        out.update({"log_metrics_calls": meter.calls.get("log_metrics", 0),
                    "log_metrics_s": train_calls, "background_cpu_s": background_cpu,
                    "overhead_per_step_s": per_step,
                    "overhead_fraction": per_step / result.step_seconds,
                    "fixed_per_stage_s": fixed, "failures": tracker.failures})
    if hasattr(loader, "close"):
        loader.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/tracking_overhead.json"))
    args = parser.parse_args()
    import torch

    from hpt_hpc.data.prepare import prepare_dataset
    from hpt_hpc.device import limit_cpu_threads
    work = Path(tempfile.mkdtemp(prefix="hpt-tracking-bench-"))
    data = work / "fashion-mnist"
    prepare_dataset("fashion-mnist", data, limit=1000)
    limit_cpu_threads(torch.device("cpu"), 1)
    from hpt_hpc.tracking import ensure_store
    store = work / "mlflow.db"
    started = time.perf_counter()
    ensure_store(f"sqlite:///{store}")  # once, like the launcher; timed separately
    schema_seconds = time.perf_counter() - started
    load_before = os.getloadavg()
    runs = []
    for r in range(args.rounds):
        for tracked, every in ((False, False), (True, False), (True, True)):
            name = f"r{r}-{'tracked' if tracked else 'null'}{'-every' if every else ''}"
            res = run_once(stage_config(work / name, data, args.steps, store), tracked, every)
            print(json.dumps(res), flush=True)
            runs.append(res)

    def med(key, **match):
        vals = [r[key] for r in runs if all(r[k] == v for k, v in match.items()) and key in r]
        return statistics.median(vals) if vals else None
    summary = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores "
                   f"(shared; load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}), "
                   f"torch {torch.__version__} on CPU",
        "model": "quickstart: ResNet-18 x0.25, 32x32 grey, batch 64, MoCo-v2 K=4096",
        "steps_per_run": args.steps, "rounds": args.rounds,
        "median_step_s_untracked": med("median_step_s", tracked=False),
        "median_step_s_tracked": med("median_step_s", tracked=True, every_step=False),
        "overhead_fraction": med("overhead_fraction", tracked=True, every_step=False),
        "overhead_per_step_us": 1e6 * med("overhead_per_step_s", tracked=True, every_step=False),
        "overhead_fraction_every_step": med("overhead_fraction", every_step=True),
        "overhead_per_step_us_every_step": 1e6 * med("overhead_per_step_s", every_step=True),
        "fixed_per_stage_s": med("fixed_per_stage_s", tracked=True),
        "store_schema_creation_s": schema_seconds,
        "failures": sum(r.get("failures", 0) for r in runs),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
