"""A requeued evaluation resumes: the process is killed (SIGKILL, as a node failure or a
time limit past its grace period) once it saved its state; the re-run ends with the same
record as an uninterrupted run, and leaves no state behind."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

from hpt_hpc.config import load_config
from hpt_hpc.eval.execute import cli_plan, resume_checkpoints, run_eval_plan
from tiny import write_tiny_config

RUN = """
import dataclasses, json, logging, sys
logging.basicConfig(level=logging.INFO)  # as the evaluation job does
from pathlib import Path
from hpt_hpc.config import load_config
from hpt_hpc.eval.execute import cli_plan, run_eval_plan
cfg = load_config(sys.argv[1])
plan = dataclasses.replace(cli_plan(cfg, sys.argv[2], "mnist", None),
                           result_file=Path(sys.argv[3]), resumable=True)
record, _ = run_eval_plan(plan)
print(json.dumps({"score": record.score, "val": record.val_score,
                  "step": record.best_step, "curve": record.curve}))
"""


def _start(config: Path, protocol: str, result: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", RUN, str(config), protocol, str(result)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _in_process(config: Path, protocol: str, result: Path) -> dict:
    """The uninterrupted run, here (what RUN prints)."""
    plan = dataclasses.replace(cli_plan(load_config(str(config)), protocol, "mnist", None),
                               result_file=result, resumable=True)
    record, _ = run_eval_plan(plan)
    return json.loads(json.dumps({"score": record.score, "val": record.val_score,
                                  "step": record.best_step, "curve": record.curve}))


def _finish(proc: subprocess.Popen):
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1]), err


def _killed_when(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.01)
    proc.kill()
    proc.wait()


def test_killed_finetune_resumes_to_the_same_record(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {}, progress_seconds=0,
                               finetune={"batch_size": 10, "iterations": 16, "eval_every": 4,
                                         "labels": 20})
    whole = _in_process(config, "finetune", tmp_path / "whole.json")
    result = tmp_path / "cut.json"
    proc = _start(config, "finetune", result)
    _killed_when(proc, result.with_suffix(".resume-seed0.pt"))
    assert not result.exists()  # killed before the end
    resumed, err = _finish(_start(config, "finetune", result))
    assert "resuming evaluation from" in err
    assert resumed == whole
    assert sorted(p.name for p in tmp_path.glob("cut.*")) == ["cut.json", "cut.npz"]
    # `hpt-hpc finetune` writes a new result file each time: it saves no resume state
    cli = cli_plan(load_config(str(config)), "finetune", "mnist", None)
    assert resume_checkpoints(cli, None).schedule(0).path is None


def test_killed_probe_reuses_its_features(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {}, progress_seconds=1e-6,
                               probe={"lr": 0.1, "iterations": 600, "milestones": [400],
                                      "batch_size": 64, "eval_every": 100})
    result = tmp_path / "probe.json"
    proc = _start(config, "linear", result)
    _killed_when(proc, result.with_suffix(".features.pt"))
    resumed, err = _finish(_start(config, "linear", result))
    assert "resuming evaluation from" in err and "features mnist/" not in err
    whole = _in_process(config, "linear", tmp_path / "whole.json")
    assert resumed == whole
    assert not list(tmp_path.glob("probe.*.pt"))
