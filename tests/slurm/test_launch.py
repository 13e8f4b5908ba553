"""`hpt-hpc launch` against the real dev cluster: arrays, chains, failures, DDP, preemption."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from submitit.core.utils import FailedJobError

from hpt_hpc.cli.main import cli
from hpt_hpc.errors import HptError
from hpt_hpc.launch.options import build_options
from hpt_hpc.launch.record import JobEntry, LaunchRecord, job_states
from hpt_hpc.launch.commands import launch
from hpt_hpc.models import load_checkpoint
from preempt import preempted_equals_uninterrupted
from tiny import write_tiny_config

pytestmark = pytest.mark.slurm


def write_config(folder: Path, datasets: dict, stages: dict, **sections) -> Path:
    sections.setdefault("optim", {"lr": 0.05, "batch_size": 8, "iterations": 6})
    sections.setdefault("checkpoint", {"every": 1000})
    return write_tiny_config(folder, datasets, stages, **sections)


def dev_options(**flags):
    return build_options("dev", executor="slurm", **flags)


def jobs_of(record: LaunchRecord, stage: str):
    return [record.job(e) for e in record.jobs if e.stage == stage]


def test_grid_becomes_one_array(slurm_cluster, tmp_path, mnist_tree):
    cfg = write_config(tmp_path, {"mnist": mnist_tree},
                       {"target": {"dataset": "mnist", "variant": "scratch"}},
                       grid={"seed": [0, 1, 2]})
    record = launch(str(cfg), ["target"], dev_options())
    ids = [e.job_id for e in record.jobs]
    assert len(ids) == 3 and len({i.split("_")[0] for i in ids}) == 1, ids
    results = [job.result() for job in jobs_of(record, "target")]
    assert [r["steps"] for r in results] == [6, 6, 6]
    assert len({r["param_digest"] for r in results}) == 3, "seeds must give different runs"
    for entry in record.jobs:
        assert (Path(entry.output_dir) / "target/checkpoints/final.pt").is_file()
    assert LaunchRecord.load(tmp_path / "out").jobs[0].job_id == ids[0]


def test_chain_target_starts_from_base_checkpoint(slurm_cluster, tmp_path, mnist_tree,
                                                  fashion_tree):
    """The target job finds its start through the MLflow registry (alias slurm-test-base)
    and the weights it starts from are the base job's final checkpoint."""
    cfg = write_config(tmp_path, {"fashion": fashion_tree, "mnist": mnist_tree},
                       {"base": {"dataset": "fashion"},
                        "target": {"dataset": "mnist", "variant": "full"}},
                       name="slurm-test", tracking={"enabled": True})
    record = launch(str(cfg), ["base", "target"], dev_options())
    base_job, target_job = jobs_of(record, "base")[0], jobs_of(record, "target")[0]
    assert record.jobs[1].depends_on == [str(base_job.job_id)]
    assert record.tracking_uri.startswith("sqlite:///") and record.pipeline_run_id
    base, target = base_job.result(), target_job.result()
    assert target["init_layout"] == "hpt-hpc"
    ckpt = load_checkpoint(target["checkpoint"])
    assert "init-cache" in ckpt["init"], ckpt["init"]
    started_from = load_checkpoint(ckpt["init"])["model"]
    base_final = load_checkpoint(base["checkpoint"])["model"]
    assert all(torch.equal(started_from[k], base_final[k]) for k in base_final)
    b, t = (slurm_cluster.sacct(j.job_id) for j in (base_job, target_job))
    assert t["Start"] >= b["End"], (b, t)
    # the launch returned at once: a job after the others ends its pipeline run
    closer = LaunchRecord.load(tmp_path / "out").closer_job_id
    assert slurm_cluster.wait(record.job(JobEntry("close", closer)), timeout=120) == \
        "COMPLETED"
    runs = CliRunner().invoke(cli, ["runs", "--output-dir", str(tmp_path / "out")]).output
    assert f"(run {record.pipeline_run_id}, FINISHED)" in runs, runs


def test_failing_stage_cancels_dependants(slurm_cluster, tmp_path, mnist_tree):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint at all")
    cfg = write_config(tmp_path, {"mnist": mnist_tree},
                       {"base": {"dataset": "mnist", "init": str(corrupt)},
                        "target": {"dataset": "mnist"}}, tracking={"enabled": True})
    record = launch(str(cfg), ["base", "target"], dev_options())
    base_job, target_job = jobs_of(record, "base")[0], jobs_of(record, "target")[0]
    with pytest.raises(FailedJobError) as err:
        base_job.result()
    assert "corrupt.pt" in str(err.value) and "Traceback" in str(err.value)
    state = slurm_cluster.wait(target_job, timeout=60)
    assert state == "CANCELLED"
    assert not (tmp_path / "out" / "target").exists(), "the dependant must never run"
    states = {row["stage"]: row["state"] for row in job_states(record)}
    assert states == {"base": "FAILED", "target": "CANCELLED"}, states
    closer = record.job(JobEntry("close", record.closer_job_id))
    assert slurm_cluster.wait(closer, timeout=120) == "COMPLETED"
    assert closer.result() == "FAILED"
    runs = CliRunner().invoke(cli, ["runs", "--output-dir", str(tmp_path / "out")]).output
    assert f"(run {record.pipeline_run_id}, FAILED)" in runs, runs


def test_two_rank_ddp_ends_with_identical_weights(slurm_cluster, tmp_path, mnist_tree):
    cfg = write_config(tmp_path, {"mnist": mnist_tree},
                       {"target": {"dataset": "mnist", "variant": "scratch"}})
    record = launch(str(cfg), ["target"], dev_options(tasks_per_node=2))
    results = jobs_of(record, "target")[0].results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert {r["world_size"] for r in results} == {2}
    assert results[0]["param_digest"] == results[1]["param_digest"]
    assert all(r["steps"] == 6 for r in results)


def test_preempted_stage_requeues_and_resumes(slurm_cluster, tmp_path, mnist_tree):
    """SIGUSR2 mid-run: checkpoint at a step boundary, requeue, resume, same end state as an
    uninterrupted run (bit-identical: same data stream, RNG and optimiser state)."""
    stages = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 300}}
    preempted_equals_uninterrupted(
        slurm_cluster, tmp_path, lambda folder: write_config(
            folder, {"mnist": mnist_tree}, stages, progress_seconds=0.2), "target", 300, 30)


def test_bad_input_fails_before_submission(slurm_cluster, tmp_path, mnist_tree):
    cfg = write_config(tmp_path, {"mnist": mnist_tree}, {"target": {"dataset": "mnist"}})
    with pytest.raises(HptError, match="unknown partition 'nope'.*debug"):
        launch(str(cfg), ["target"], dev_options(partition="nope"))
    missing = write_config(tmp_path, {"mnist": tmp_path / "absent"},
                           {"target": {"dataset": "mnist"}})
    with pytest.raises(HptError, match="absent"):
        launch(str(missing), ["target"], dev_options())
    with pytest.raises(HptError, match="did you mean 'iterations'"):
        launch(str(cfg), ["target"], dev_options(), overrides=["optim.iteratons=3"])
    assert not (tmp_path / "out" / "launches").exists()


def test_dead_controller_is_a_quick_clear_error(slurm_cluster, tmp_path, mnist_tree,
                                                monkeypatch):
    """A slurm.conf whose controller port has no slurmctld behind it (a real dead one)."""
    text = slurm_cluster.conf.read_text()
    dead = tmp_path / "slurm.conf"
    lines = [ln for ln in text.splitlines() if not ln.startswith("SlurmctldPort")]
    dead.write_text("\n".join(lines + ["SlurmctldPort=1"]) + "\n")
    monkeypatch.setenv("SLURM_CONF", str(dead))
    cfg = write_config(tmp_path, {"mnist": mnist_tree}, {"target": {"dataset": "mnist"}},
                       tracking={"enabled": True})
    start = time.monotonic()
    with pytest.raises(HptError, match="controller"):
        launch(str(cfg), ["target"], dev_options())
    assert time.monotonic() - start < 15
    assert not (tmp_path / "out" / "mlflow.db").exists()  # preflight before any store


def test_status_and_cancel_from_the_record(slurm_cluster, tmp_path, mnist_tree):
    stages = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 100000}}
    cfg = write_config(tmp_path, {"mnist": mnist_tree}, stages)
    launch(str(cfg), ["target"], dev_options())
    record = LaunchRecord.load(tmp_path / "out")  # as `hpt-hpc status/cancel DIR` do
    job = record.job(record.jobs[0])
    end = time.monotonic() + 60
    while job_states(record)[0]["state"] != "RUNNING":
        assert time.monotonic() < end, job_states(record)
        time.sleep(0.5)
    from hpt_hpc.launch.record import cancel_jobs
    assert cancel_jobs(record) == [record.jobs[0].job_id]
    assert slurm_cluster.wait(job, timeout=60) == "CANCELLED"


def test_cancel_of_a_job_the_cluster_does_not_know(slurm_cluster, tmp_path):
    """scancel exits 0 and says nothing for an id the controller does not know; `cancel`
    checks squeue and sacct first and names the job as not cancelled (exit 1)."""
    from hpt_hpc.launch.record import JobEntry
    record = LaunchRecord.new(tmp_path / "out", "slurm", str(tmp_path / "config.yaml"),
                              ["target"], str(tmp_path / "logs"))
    record.jobs.append(JobEntry(stage="target", job_id="999999999",
                                output_dir=str(tmp_path / "out")))
    result = CliRunner().invoke(cli, ["cancel", str(record.save())])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert not any(ln.startswith("cancelled:") for ln in result.output.splitlines())
    lines = [ln for ln in result.output.splitlines() if ln.startswith("failed:")]
    assert len(lines) == 1 and "job 999999999 not cancelled (SLURM knows no such job" \
        in lines[0], result.output
