"""Launching without SLURM: the local and debug executors, sweeps and the executor rule."""
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.errors import HptError
from hpt_hpc.launch.options import SchedulerOptions, build_options, parse_minutes, \
    resolve_executor
from hpt_hpc.launch.record import LaunchRecord, job_states
from hpt_hpc.launch.commands import launch
from hpt_hpc.config import load_config
from hpt_hpc.plan import grid_cells, plan_stages
from hpt_hpc.models import load_checkpoint
from tiny import write_tiny_config


def write_config(folder: Path, datasets: dict, stages: dict, **sections) -> Path:
    sections.setdefault("optim", {"lr": 0.05, "batch_size": 8, "iterations": 4})
    sections.setdefault("checkpoint", {"every": 1000})
    return write_tiny_config(folder, datasets, stages, **sections)


def test_executor_rule(monkeypatch, tmp_path):
    assert resolve_executor(SchedulerOptions(executor="debug")) == "debug"
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert resolve_executor(SchedulerOptions()) == "local"
    fake = tmp_path / "sbatch"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert resolve_executor(SchedulerOptions()) == "slurm"


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
        assert res["steps"] == 4 and res["init"] == "hpt-hpc"
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
    from hpt_hpc.launch.submit import make_executor

    def flags(command):
        out = CliRunner().invoke(cli, [command, "--help"], terminal_width=200)
        return {line.split()[0].rstrip(",") for line in out.output.splitlines()
                if line.strip().startswith("--")}
    scheduler = {"--executor", "--profile", "--partition", "--nodes", "--gpus-per-node",
                 "--tasks-per-node", "--cpus-per-task", "--mem", "--time", "--account",
                 "--qos", "--constraint", "--sbatch", "--max-num-timeout", "--log-folder",
                 "--container", "--container-bind", "--container-runtime"}
    assert scheduler <= flags("launch") and scheduler <= flags("sweep")
    default = make_executor("slurm", tmp_path, build_options("dev"), "x")
    assert default._executor.max_num_timeout == 30
    chosen = make_executor("slurm", tmp_path, build_options(None, max_num_timeout=5), "x")
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
