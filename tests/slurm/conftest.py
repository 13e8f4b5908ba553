"""Fixtures for tests against a real SLURM cluster (slurm/dev-cluster/): the host's node
`localhost` (partitions debug, cpu) and two namespaced nodes (partition `nodes`).

`slurm_cluster` (session scope) starts the dev cluster with slurm/dev-cluster/start.sh,
which is a quick no-op when it already runs, and points SLURM_CONF at it, so that
sbatch/sacct/scontrol and submitit (which calls them as subprocesses) all talk to it.
The cluster is left running after the session; stop it with slurm/dev-cluster/stop.sh.

Installing the packages is not the fixture's job: when they are missing the tests fail
(never skip) and say to run slurm/dev-cluster/install.sh.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpt_hpc.launch.record import is_active

REPO = Path(__file__).resolve().parents[2]
DEV_CLUSTER = REPO / "slurm" / "dev-cluster"
START_TIMEOUT_S = 300
NODES = 2  # namespaced compute nodes (start.sh --nodes), each its own host to SLURM/torch
# States of a job that has not finished (UNKNOWN: not yet in sacct).


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "slurm: needs the real single-node SLURM dev cluster (slurm/dev-cluster/)")


@dataclass(frozen=True)
class SlurmCluster:
    """A running dev cluster: its folder, its slurm.conf and the partitions on its node."""

    dir: Path
    conf: Path
    partition: str = "debug"          # the default partition
    partitions: tuple = ("debug", "cpu")
    scripts: Path = DEV_CLUSTER

    @property
    def env(self) -> dict:
        """The environment for SLURM client commands and submitit."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, timeout: float = 30) -> str:
        """Run a SLURM client command (sinfo, sacct, ...) and return its stdout."""
        out = subprocess.run(list(args), env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({out.returncode}): {out.stderr}")
        return out.stdout

    def sacct(self, job_id: str, fields=("JobID", "State", "Start", "End", "Reason"),
              settle_s: float = 60) -> dict:
        """The accounting record of one job allocation (no steps) as {field: value}.

        slurmdbd records a job after the controller ends it, and an array task's own row
        (``123_4``) may appear later than its array's dependants start; so, for up to
        `settle_s` seconds, this waits until the record exists with a final state, then
        returns what accounting has ({} when it has no row for the job).
        """
        end = time.monotonic() + settle_s
        fields = ("State",) + tuple(f for f in fields if f != "State")  # what it waits on
        while True:
            found = [r for r in self.sacct_all(job_id, fields, steps=False)
                     if r["JobID"] == str(job_id)]
            record = found[0] if found else {}
            if (record and not is_active(record["State"])) \
                    or time.monotonic() > end:
                return record
            time.sleep(0.5)

    def sacct_all(self, job_id: str, fields=("JobID", "State", "Start", "End"),
                  steps: bool = True) -> list:
        """The accounting records of a job and (steps=True) of its steps (1.batch, ...)."""
        fields = ("JobID",) + tuple(f for f in fields if f != "JobID")
        out = self.run("sacct", *([] if steps else ["-X"]), "-n", "--parsable2",
                       "-j", str(job_id), "-o", ",".join(fields))
        return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line]

    def attempts(self, job_id: str) -> list:
        """The states of every attempt of a job in accounting, oldest first (a requeued
        job has one record per attempt: ``sacct --duplicates``)."""
        out = self.run("sacct", "-X", "-D", "-n", "--parsable2", "-j", str(job_id), "-o",
                       "JobID,State")
        return [line.split("|")[1] for line in out.splitlines()
                if line.split("|")[0] == str(job_id)]

    def scontrol_job(self, job_id: str) -> dict:
        """The controller's view of a job (kept MinJobAge=600 s after it ends)."""
        out = self.run("scontrol", "-o", "show", "job", str(job_id))
        return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)

    def wait(self, job, timeout: float = 90, poll: float = 0.5) -> str:
        """Wait, with a deadline, until `job` has a final state in sacct; return the state.

        (`job.done()` turns True as soon as the result file exists, while sacct may still
        say RUNNING; and `job.state` is cached, so the state is read with force here.)
        """
        end = time.monotonic() + timeout
        while True:
            state = job.watcher.get_state(job.job_id, mode="force")
            if not is_active(state):
                return state.split()[0]     # "CANCELLED by 0" -> "CANCELLED"
            if time.monotonic() > end:
                pytest.fail(f"job {job.job_id} not finished after {timeout}s (state {state})")
            time.sleep(poll)

    def wait_for_step(self, job, at_least: int, total: int, timeout: float = 180) -> None:
        """Until the job's progress lines report step ``at_least`` of ``total`` or later."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            steps = re.findall(rf"step (\d+)/{total}", job.stderr() or "")
            if steps and int(steps[-1]) >= at_least:
                return
            time.sleep(0.3)
        pytest.fail(f"step {at_least}/{total} never appeared in job {job.job_id}'s log:\n"
                    f"{job.stderr()}")

    def slurmd_pid(self) -> int:
        return int((self.dir / "run" / "slurmd-localhost.pid").read_text().split()[0])


def _start_cluster() -> SlurmCluster:
    missing = [b for b in ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch")
               if not (shutil.which(b) or Path("/usr/sbin", b).exists())]
    if missing:
        pytest.fail(f"SLURM dev cluster packages are missing ({', '.join(missing)}): run "
                    f"`bash {DEV_CLUSTER / 'install.sh'}` (as root) first", pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the SLURM dev cluster runs its daemons as root: run the slurm tests as "
                    "root", pytrace=False)
    try:
        proc = subprocess.run(["bash", str(DEV_CLUSTER / "start.sh"), "--nodes", str(NODES)],
                              capture_output=True,
                              text=True, timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"slurm/dev-cluster/start.sh did not finish in {START_TIMEOUT_S}s",
                    pytrace=False)
    if proc.returncode != 0:
        pytest.fail(f"slurm/dev-cluster/start.sh failed ({proc.returncode}):\n{proc.stderr}"
                    f"{proc.stdout}", pytrace=False)
    exports = [ln for ln in proc.stdout.splitlines() if ln.startswith("export SLURM_CONF=")]
    assert exports, f"start.sh printed no SLURM_CONF export:\n{proc.stdout}"
    conf = Path(exports[-1].split("=", 1)[1])
    return SlurmCluster(dir=conf.parent.parent, conf=conf)


@pytest.fixture(scope="session")
def slurm_cluster():
    """Start (or reuse) the dev cluster; SLURM_CONF points at it for the whole session."""
    cluster = _start_cluster()
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture
def submitit_folder(tmp_path) -> Path:
    """A submitit log folder of its own for each test (job ids restart after a wipe)."""
    folder = tmp_path / "submitit"
    folder.mkdir()
    return folder

