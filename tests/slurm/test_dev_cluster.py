"""submitit against the real single-node SLURM dev cluster: arrays, failures, dependencies."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path

import cloudpickle
import pytest
import submitit
from submitit.core.utils import FailedJobError, UncompletedJobError

pytestmark = pytest.mark.slurm

# The jobs unpickle the functions below in a fresh interpreter that cannot import this test
# module (pytest put its folder on sys.path, the job does not): ship them by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


# ---------------------------------------------------------------- job functions
def square_with_env(x: int) -> tuple:
    return x * x, os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_JOB_PARTITION")


def fail(message: str) -> None:
    raise ValueError(message)


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def sleep_then(value: str, seconds: float) -> str:
    import time
    time.sleep(seconds)
    return value


# ---------------------------------------------------------------- helpers
def executor(folder: Path, cluster, **params) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
    ex.update_parameters(timeout_min=3, cpus_per_task=1, mem_gb=0.25,
                         slurm_partition=cluster.partition, **params)
    return ex


def sacct_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# ---------------------------------------------------------------- tests
def test_cluster_is_configured(slurm_cluster):
    assert os.environ["SLURM_CONF"] == str(slurm_cluster.conf)
    out = slurm_cluster.run("sinfo", "-h", "-o", "%P|%a|%T")
    parts = {line.split("|")[0]: line.split("|")[1:] for line in out.split()}
    assert parts["debug*"][0] == "up"          # the default partition
    assert "cpu" in parts
    # Two namespaced nodes: their own hostnames, addresses and name resolution.
    assert parts["nodes"][0] == "up"
    seen = slurm_cluster.run("srun", "-p", "nodes", "-N", "2", "--ntasks-per-node", "1",
                             "sh", "-c", "echo $(hostname) $(getent hosts hptdevn2)")
    assert sorted(line.split()[0] for line in seen.splitlines()) == ["hptdevn1", "hptdevn2"]
    assert all(line.split()[1] == "10.77.0.12" for line in seen.splitlines())
    # Accounting works: submitit reads job states from sacct.
    assert "hptdev" in slurm_cluster.run("sacctmgr", "-n", "-P", "list", "cluster",
                                         "format=cluster")


def test_map_array_returns_each_task_result(slurm_cluster, submitit_folder):
    ex = executor(submitit_folder, slurm_cluster, slurm_array_parallelism=3)
    jobs = ex.map_array(square_with_env, [2, 3, 4])
    assert len(jobs) == 3
    assert len({j.job_id for j in jobs}) == 3          # <array>_0, <array>_1, <array>_2
    for j in jobs:
        assert slurm_cluster.wait(j) == "COMPLETED"
    results = [j.result() for j in jobs]
    assert [r[0] for r in results] == [4, 9, 16]
    assert sorted(r[1] for r in results) == ["0", "1", "2"]
    assert {r[2] for r in results} == {slurm_cluster.partition}


def test_failing_job_raises_failed_job_error_with_original_message(slurm_cluster,
                                                                    submitit_folder):
    message = f"boom-{uuid.uuid4().hex}"
    job = executor(submitit_folder, slurm_cluster).submit(fail, message)
    assert slurm_cluster.wait(job) == "FAILED"
    with pytest.raises(FailedJobError) as err:
        job.result()
    assert message in str(err.value)
    assert "ValueError" in str(err.value)


def test_afterok_dependent_never_runs_when_parent_fails(slurm_cluster, submitit_folder,
                                                        tmp_path):
    ex = executor(submitit_folder, slurm_cluster)
    parent = ex.submit(fail, "parent fails")
    marker = tmp_path / "child-ran"
    ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{parent.job_id}"})
    child = ex.submit(touch, str(marker))

    assert slurm_cluster.wait(parent) == "FAILED"
    # DependencyParameters=kill_invalid_depend in slurm.conf: the child is cancelled (a few
    # seconds later) instead of pending forever with reason DependencyNeverSatisfied.
    assert slurm_cluster.wait(child, timeout=60) == "CANCELLED"
    record = slurm_cluster.sacct(child.job_id, ("JobID", "State", "Elapsed"))
    assert record["State"] == "CANCELLED"
    # It never started: no time elapsed, no batch step. (sacct's Start is sometimes the
    # cancel time instead of None, so it proves nothing.)
    assert record["Elapsed"] == "00:00:00"
    assert [r["JobID"] for r in slurm_cluster.sacct_all(child.job_id)] == [child.job_id]
    # sacct keeps the last pending reason ("Dependency"); the controller has the real one.
    ctl = slurm_cluster.scontrol_job(child.job_id)
    assert ctl["JobState"] == "CANCELLED"
    assert ctl["Reason"] == "DependencyNeverSatisfied"
    assert ctl["Dependency"] == f"afterok:{parent.job_id}(failed)"
    assert not marker.exists()
    child._results_timeout_s = 0     # no result file will come: do not wait 15 s for it
    with pytest.raises(UncompletedJobError, match="CANCELLED"):
        child.result()


def test_afterok_dependent_runs_after_parent_succeeds(slurm_cluster, submitit_folder):
    ex = executor(submitit_folder, slurm_cluster)
    parent = ex.submit(sleep_then, "parent", 2)
    ex.update_parameters(slurm_additional_parameters={"dependency": f"afterok:{parent.job_id}"})
    child = ex.submit(sleep_then, "child", 0)

    assert slurm_cluster.wait(child) == "COMPLETED"
    assert (parent.result(), child.result()) == ("parent", "child")
    a, b = slurm_cluster.sacct(parent.job_id), slurm_cluster.sacct(child.job_id)
    assert a["State"] == b["State"] == "COMPLETED"
    assert sacct_time(b["Start"]) >= sacct_time(a["End"])


def test_start_is_idempotent(slurm_cluster):
    before = slurm_cluster.slurmd_pid()
    out = subprocess.run(["bash", str(slurm_cluster.scripts / "start.sh")],
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "already up" in out.stderr and "starting" not in out.stderr
    assert f"export SLURM_CONF={slurm_cluster.conf}" in out.stdout
    assert slurm_cluster.slurmd_pid() == before
    status = subprocess.run(["bash", str(slurm_cluster.scripts / "status.sh")],
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stdout + status.stderr
