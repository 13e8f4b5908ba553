"""Bits of a CPU result: the thread count is a setting (``compute.threads``), honoured and
recorded, so a run gives the same parameters on fewer cores and under load. (Unset, the
rule cores - loader workers is recorded: tests/test_cli.py's quickstart.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

from tiny import write_tiny_config

ROOT = Path(__file__).resolve().parents[1]


def _train(folder: Path, mnist_tree: Path, sets, cores=None) -> dict:
    """``hpt-hpc train`` of a tiny base stage in its own process (torch threads are
    per process), on the first ``cores`` CPUs; the stage's result.json."""
    folder.mkdir()
    cfg = write_tiny_config(folder, {"m": mnist_tree}, {"base": {"dataset": "m"}},
                            optim={"lr": 0.05, "batch_size": 16, "iterations": 8,
                                   "weight_decay": 1e-4})
    args = [sys.executable, "-m", "hpt_hpc.cli.main", "train", "--config", str(cfg)]
    for item in sets:
        args += ["--set", item]
    affinity = sorted(os.sched_getaffinity(0))[:cores] if cores else None
    env = {k: v for k, v in os.environ.items()
           if k not in ("SLURM_CPUS_PER_TASK", "HPT_CPUS_PER_TASK")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run(args, capture_output=True, text=True, env=env,
                         preexec_fn=(lambda: os.sched_setaffinity(0, affinity))
                         if affinity else None)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads((folder / "out" / "base" / "result.json").read_text())


def test_thread_setting_is_honoured_recorded_and_gives_the_same_bits_anywhere(tmp_path,
                                                                               mnist_tree):
    everything = _train(tmp_path / "all", mnist_tree, ["compute.threads=2"])
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:  # one core, shared with a busy process: a smaller, loaded machine
        small = _train(tmp_path / "small", mnist_tree, ["compute.threads=2"], cores=1)
    finally:
        busy.kill()
        busy.wait()
    assert everything["threads"] == small["threads"] == 2
    assert everything["param_digest"] == small["param_digest"]
    assert everything["final_loss"] == small["final_loss"]
