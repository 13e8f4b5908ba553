"""Launching without SLURM: the local and debug executors, sweeps and the executor rule."""
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import cloudpickle
import pytest
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.errors import HptError
from hpt_hpc.launch.executors import resolve_executor
from hpt_hpc.launch.options import SchedulerOptions, build_options, parse_minutes
from hpt_hpc.launch.record import LaunchRecord, job_states
from hpt_hpc.launch.commands import launch
from hpt_hpc.config import load_config
from hpt_hpc.plan import grid_cells, plan_stages
from hpt_hpc.models import load_checkpoint
from tiny import write_tiny_config

# The local jobs unpickle ``clocked`` and ``ClockPlan`` in a fresh interpreter that cannot
# import this test module: ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def write_config(folder: Path, datasets: dict, stages: dict, **sections) -> Path:
    sections.setdefault("optim", {"lr": 0.05, "batch_size": 8, "iterations": 4})
    sections.setdefault("checkpoint", {"every": 1000})
    return write_tiny_config(folder, datasets, stages, **sections)


def test_executor_rule(monkeypatch, tmp_path):
    assert resolve_executor(SchedulerOptions(executor="debug")).name == "debug"
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert resolve_executor(SchedulerOptions()).name == "local"
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert resolve_executor(SchedulerOptions()).name == "slurm"


def test_profiles_and_flags():
    opts = build_options("dev", partition="cpu", tasks_per_node=2)
    assert (opts.partition, opts.tasks_per_node, opts.cpus_per_task) == ("cpu", 2, 1)
    assert build_options("gpu-a100").ranks_per_node == 4
    with pytest.raises(HptError, match="unknown cluster profile 'nope'.*dev"):
        build_options("nope")
    assert parse_minutes("01:30:00") == 90 and parse_minutes("1-00:00") == 1440
    with pytest.raises(HptError, match="--time"):
        parse_minutes("soon")


def test_grid_cells(tmp_path, mnist_tree):
    cfg = load_config(write_config(tmp_path, {"m": mnist_tree},
                                   {"base": {"dataset": "m"},
                                    "target": {"dataset": "m", "init": "stage:base"}},
                                   grid={"variant": ["full", "bn"], "seed": [0, 1, 2]}))
    cells = grid_cells(cfg, "target")
    assert len(cells) == 6
    assert len({c.name for c in cells}) == 6
    cell = load_config(tmp_path / "config.yaml", cells[3].overrides)
    assert cell.stages["target"].variant == "bn" and cell.seed == 0
    assert cell.output_dir.endswith("grid/variant=bn,seed=0")
    (tmp_path / "out/base/checkpoints").mkdir(parents=True)  # base finished earlier
    (tmp_path / "out/base/checkpoints/final.pt").write_bytes(b"")
    plan = plan_stages(cfg, ["target"])[3]
    assert plan.config == cell and plan.label == "target-variant=bn,seed=0"
    assert plan.init.value == str(tmp_path / "out/base/checkpoints/final.pt")


def test_local_chain_with_grid(tmp_path, mnist_tree, fashion_tree):
    cfg = write_config(tmp_path, {"f": fashion_tree, "m": mnist_tree},
                       {"base": {"dataset": "f"}, "target": {"dataset": "m"}},
                       grid={"lr": [0.01, 0.1]}, tracking={"enabled": True})
    record = launch(str(cfg), ["base", "target"], build_options(None, executor="local"))
    targets = [e for e in record.jobs if e.stage == "target"]
    assert len(targets) == 2
    results = [record.job(e).result() for e in targets]
    base_final = str(tmp_path / "out/base/checkpoints/final.pt")
    for res in results:  # each cell started from base, found through the registry
        assert res["steps"] == 4 and res["init_layout"] == "hpt-hpc"
        started = load_checkpoint(load_checkpoint(res["checkpoint"])["init"])["model"]
        assert torch.equal(started["encoder_q.conv1.weight"],
                           load_checkpoint(base_final)["model"]["encoder_q.conv1.weight"])
    assert results[0]["param_digest"] != results[1]["param_digest"]
    # one MLflow store for the whole launch; sweep cells do not make their own
    assert (tmp_path / "out/mlflow.db").is_file()
    assert not list((tmp_path / "out/grid").rglob("mlflow.db"))
    states = {r["job_id"]: r["state"] for r in job_states(LaunchRecord.load(tmp_path / "out"))}
    assert set(states.values()) == {"FINISHED"}
    shown = CliRunner().invoke(cli, ["status", str(tmp_path / "out"), "--watch", "--every", "1"])
    assert shown.exit_code == 0, shown.output  # --watch ends: nothing is pending or running
    assert shown.output.count("FINISHED\tstep 4/4 (100%) (as of ") == 3, shown.output
    # the launch returned before its last jobs ended: its pipeline run ends after them
    runs = wait_for_output(["runs", "--output-dir", str(tmp_path / "out")], ", FINISHED)")
    assert runs.count("FINISHED") == 1 + 3, runs  # the pipeline run and its stage runs


def wait_for_output(args, wanted: str, timeout: float = 90) -> str:
    """The output of the CLI command ``args`` once it contains ``wanted``."""
    end = time.monotonic() + timeout
    while True:
        shown = CliRunner().invoke(cli, args)
        assert shown.exit_code == 0, shown.output
        if wanted in shown.output:
            return shown.output
        assert time.monotonic() < end, f"{wanted!r} never shown:\n{shown.output}"
        time.sleep(1)


def test_status_and_cancel_follow_a_detached_local_launch(tmp_path, mnist_tree):
    """`hpt-hpc launch --executor local` returns while its job runs: `status` (another
    process) shows it RUNNING with its step and ETA, `status --watch` refreshes until
    `cancel` stops it, and the launch's pipeline run (and the job's run) end KILLED."""
    cfg = write_config(tmp_path, {"m": mnist_tree},
                       {"target": {"dataset": "m", "iterations": 100000}},
                       progress_seconds=0.2,
                       tracking={"enabled": True, "system_metrics": False})
    out, hpt = tmp_path / "out", [sys.executable, "-m", "hpt_hpc.cli.main"]
    try:
        with (tmp_path / "launch.txt").open("w") as log:  # the job inherits it: not a pipe
            launched = subprocess.run(hpt + ["launch", "--config", str(cfg), "--stage",
                                             "target", "--executor", "local"],
                                      stdout=log, stderr=subprocess.STDOUT, timeout=300)
        assert launched.returncode == 0, (tmp_path / "launch.txt").read_text()
        job = LaunchRecord.load(out).jobs[0].job_id
        running = re.compile(rf"^target\tjob {job}\tRUNNING\tstep (\d+)/100000 \((\d+)%\), "
                             rf"ETA (\d+h\d\dm|\d+m\d\ds|\d+s) \(as of", re.M)
        end = time.monotonic() + 120
        while not running.search(shown := CliRunner().invoke(cli, ["status", str(out)]).output):
            assert f"job {job}\tRUNNING" in shown, shown  # it runs from the start
            assert time.monotonic() < end, shown
            time.sleep(0.5)
        step, percent, _ = running.search(shown).groups()
        assert int(percent) == round(100 * int(step) / 100000)
        watched = tmp_path / "watch.txt"
        with watched.open("w") as log:
            watch = subprocess.Popen(hpt + ["status", str(out), "--watch", "--every", "1"],
                                     stdout=log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 120
        while len(running.findall(watched.read_text())) < 2:  # two refreshes, still running
            assert watch.poll() is None and time.monotonic() < end, watched.read_text()
            time.sleep(0.5)
        cancelled = CliRunner().invoke(cli, ["cancel", str(out)])
        assert cancelled.output == f"cancelled: {job}\n", cancelled.output
        assert watch.wait(timeout=60) == 0  # --watch ends once nothing runs
        last = watched.read_text().splitlines()[-1]
        assert last.startswith(f"target\tjob {job}\tINTERRUPTED\tstep "), watched.read_text()
        runs = wait_for_output(["runs", "--output-dir", str(out)], ", KILLED)")
        assert re.search(r"^target\s+stage .* KILLED ", runs, re.M), runs
        import psutil  # nothing of the job (or of the closer that ended the run) is left
        _, alive = psutil.wait_procs(_processes_of(out), timeout=30)
        assert not [p.info["cmdline"] for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    finally:  # a failed run leaves no job behind
        for proc in _processes_of(out):
            try:
                proc.kill()
            except Exception:  # noqa: BLE001 - ended in between
                pass


def _processes_of(folder: Path) -> list:
    """Live processes with ``folder`` in their command line (local jobs, closer, watch)."""
    import psutil
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE
            and any(str(folder) in a for a in p.info["cmdline"] or [])]


def test_debug_executor_runs_in_process(tmp_path, mnist_tree):
    cfg = write_config(tmp_path, {"m": mnist_tree}, {"target": {"dataset": "m"}})
    record = launch(str(cfg), ["target"], build_options(None, executor="debug"))
    assert job_states(record)[0]["state"] == "ran in-process (debug)"
    assert (tmp_path / "out/target/checkpoints/final.pt").is_file()


def test_chain_with_missing_upstream_init_fails_before_submission(tmp_path, mnist_tree):
    cfg = write_config(tmp_path, {"m": mnist_tree},
                       {"base": {"dataset": "m"},
                        "target": {"dataset": "m", "init": "stage:base"}})
    with pytest.raises(HptError, match="neither in this --chain nor finished"):
        launch(str(cfg), ["target"], build_options(None, executor="local"))
    assert not (tmp_path / "out" / "launches").exists()


@pytest.mark.parametrize("executor", ["debug", "local"])
def test_failed_stage_stops_its_dependants_without_slurm(tmp_path, mnist_tree, executor):
    """The submitter's afterok rule on every executor: a stage that fails leaves its
    dependants unrun, and the one error names both."""
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    cfg = write_config(tmp_path, {"m": mnist_tree},
                       {"base": {"dataset": "m", "init": str(corrupt)},
                        "target": {"dataset": "m"}})
    with pytest.raises(HptError) as err:
        launch(str(cfg), ["base", "target"], build_options(None, executor=executor))
    assert "corrupt.pt" in str(err.value)
    assert "target: not run, because base failed" in str(err.value)
    assert not (tmp_path / "out" / "target").exists()
    record = LaunchRecord.load(tmp_path / "out")  # the record of what ran is kept
    assert [e.stage for e in record.jobs] == ["base"]
    # through the CLI: submitted work that failed is exit code 1; in this process (debug)
    # the bad input (a corrupt init file) is still known as such: exit code 2
    again = CliRunner().invoke(cli, ["launch", "--config", str(cfg), "--chain", "base,target",
                                     "--executor", executor])
    word = {"local": "failed: ", "debug": "error: "}[executor]
    assert again.exit_code == {"local": 1, "debug": 2}[executor], again.output
    assert again.output.count(word) == 1 and "Traceback" not in again.output


def test_launch_and_sweep_take_the_same_scheduler_options(tmp_path):
    """One convention: every scheduler flag on both commands, with help text; the timeout
    requeue budget reaches submitit."""
    from hpt_hpc.launch.executors import executor_named

    def flags(command):
        out = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
        return {line.split()[0].rstrip(",") for line in out.output.splitlines()
                if line.strip().startswith("--")}
    scheduler = {"--executor", "--profile", "--partition", "--nodes", "--gpus-per-node",
                 "--tasks-per-node", "--cpus-per-task", "--mem", "--time", "--account",
                 "--qos", "--constraint", "--sbatch", "--max-num-timeout", "--log-folder",
                 "--container", "--container-bind", "--container-runtime"}
    assert scheduler <= flags("launch") and scheduler <= flags("sweep")
    slurm = executor_named("slurm")
    default = slurm.submitter(tmp_path, build_options("dev"), "x")
    assert default._executor.max_num_timeout == 30
    chosen = slurm.submitter(tmp_path, build_options(None, max_num_timeout=5), "x")
    assert chosen._executor.max_num_timeout == 5


def test_every_option_of_every_command_has_help_text():
    import click

    def commands(group, path):
        for name, sub in group.commands.items():
            if isinstance(sub, click.Group):
                yield from commands(sub, path + [name])
            else:
                yield " ".join(path + [name]), sub
    missing = [f"{name} {p.opts[0]}" for name, cmd in commands(cli, [])
               for p in cmd.params if isinstance(p, click.Option) and not p.help]
    assert not missing, missing


@dataclass
class ClockPlan:
    """A cheap plan: its job only records when it ran (``config.output_dir``: where)."""
    label: str
    config: Any
    meet: str = ""  # a plan whose job must be running while this one runs


def clocked(plan: ClockPlan) -> str:
    """Write start and end times and the core share; with ``meet``, wait (at most 60 s)
    until that job has started, which only happens if the two run at the same time."""
    import os
    import time
    out = Path(plan.config.output_dir)
    start = time.time()
    (out / f"{plan.label}.started").touch()
    while plan.meet and not (out / f"{plan.meet}.started").exists() \
            and time.time() < start + 60:
        time.sleep(0.05)
    met = not plan.meet or (out / f"{plan.meet}.started").exists()
    (out / f"{plan.label}.json").write_text(json.dumps(
        {"start": start, "end": time.time(), "met": met,
         "cpus": os.environ.get("HPT_CPUS_PER_TASK")}))
    return plan.label


def test_local_jobs_run_by_dependency_not_phase_by_phase(tmp_path, monkeypatch):
    """Sweep-shaped phases on real local jobs, at most 2 at once: the independent phases
    ``up`` and ``scratch`` overlap, ``down`` starts only after ``up`` ended, ``eval``
    (afterany) after everything else; never more than 2 jobs ran at once, and each got
    half of the cores."""
    from hpt_hpc.device import available_cores
    from hpt_hpc.launch import job, submit as submitter
    from hpt_hpc.plan import Phase
    monkeypatch.setattr(job, "job_for", lambda plan: clocked)
    where = SimpleNamespace(output_dir=str(tmp_path))
    phases = [Phase("up", [ClockPlan("up", where, meet="scratch-0")]),
              Phase("scratch", [ClockPlan("scratch-0", where, meet="up"),
                                ClockPlan("scratch-1", where)]),
              Phase("down", [ClockPlan(f"down-{i}", where) for i in range(2)], ("up",)),
              Phase("eval", [ClockPlan("eval", where)], ("scratch", "down"), "afterany")]
    record = LaunchRecord.new(tmp_path, "local", str(tmp_path), ["clock"],
                              str(tmp_path / "logs"))
    submitter.submit(phases, build_options(None, executor="local"), record, max_parallel=2)
    ran = {p.label: json.loads((tmp_path / f"{p.label}.json").read_text())
           for phase in phases for p in phase.plans}
    assert ran["up"]["met"] and ran["scratch-0"]["met"]  # ran at the same time
    assert ran["up"]["start"] < ran["scratch-0"]["end"]
    assert ran["scratch-0"]["start"] < ran["up"]["end"]
    assert min(ran[f"down-{i}"]["start"] for i in range(2)) >= ran["up"]["end"]
    assert ran["eval"]["start"] >= max(r["end"] for k, r in ran.items() if k != "eval")
    events = sorted([(r["start"], 1) for r in ran.values()] +
                    [(r["end"], -1) for r in ran.values()])
    running = [sum(step for _, step in events[:n + 1]) for n in range(len(events))]
    assert max(running) == 2  # the cap, across phases
    assert {r["cpus"] for r in ran.values()} == {str(max(1, available_cores() // 2))}
    ids = {e.cell: e.job_id for e in record.jobs}
    after = {e.cell: e.depends_on for e in record.jobs}
    assert after["down-0"] == after["down-1"] == [ids["up"]] and after["up"] == []
    assert after["eval"] == [ids[k] for k in ("scratch-0", "scratch-1", "down-0", "down-1")]


def test_a_local_jobs_share_of_cores_limits_its_torch_threads(monkeypatch):
    from hpt_hpc.device import CPUS_PER_TASK_ENV, limit_cpu_threads
    monkeypatch.setenv(CPUS_PER_TASK_ENV, "1")
    before = torch.get_num_threads()
    try:
        assert limit_cpu_threads(torch.device("cpu"), 0) == torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
