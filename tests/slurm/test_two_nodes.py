"""Across two real nodes of the dev cluster (network, UTS and mount namespaces: their own
hostnames and addresses): DDP with shuffle-BN, rendezvous at the first node."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import StageLayout
from hpt_hpc.launch.commands import launch
from hpt_hpc.launch.options import build_options
from hpt_hpc.models import load_checkpoint
from tiny import write_tiny_config, write_tiny_experiment

TWO_NODES = "nodes"  # the partition of the namespaced nodes (start.sh --nodes 2)
REPO = Path(__file__).resolve().parents[2]


def test_ddp_stage_spans_two_nodes_with_identical_weights(slurm_cluster, tmp_path,
                                                           mnist_tree):
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                            {"target": {"dataset": "mnist", "variant": "scratch"}},
                            optim={"lr": 0.05, "batch_size": 8, "iterations": 6},
                            checkpoint={"every": 1000})
    options = build_options("dev", nodes=2, tasks_per_node=1, partition=TWO_NODES)
    record = launch(str(cfg), ["target"], options)
    [job] = [record.job(e) for e in record.jobs]
    results = sorted(job.results(), key=lambda r: r["rank"])
    assert [r["rank"] for r in results] == [0, 1]
    assert {r["world_size"] for r in results} == {2}
    hosts = [r["host"] for r in results]
    assert len(set(hosts)) == 2 and all(h.startswith("hptdevn") for h in hosts), hosts
    assert hosts[0] == "hptdevn1"  # rank 0, the rendezvous, on the allocation's first node
    assert results[0]["param_digest"] == results[1]["param_digest"]
    assert all(r["steps"] == 6 for r in results)


def test_preempted_two_node_job_requeues_and_resumes_bit_identical(slurm_cluster, tmp_path,
                                                                   mnist_tree):
    """SIGUSR2 to a 2-node job (as before a time limit): both ranks stop at one step
    boundary, rank 0 checkpoints, SLURM requeues the allocation, the run resumes and ends
    with the weights of an uninterrupted 2-node run."""
    # 600 steps: long enough that the signal lands before the end on a quiet machine (with
    # 200 a fast run once finished before the step boundary it was to stop at)
    stages = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 600}}
    options = build_options("dev", nodes=2, tasks_per_node=1, partition=TWO_NODES)
    jobs = {}
    for name in ("cut", "whole"):
        folder = tmp_path / name
        folder.mkdir()
        cfg = write_tiny_config(folder, {"mnist": mnist_tree}, stages, progress_seconds=0.2,
                                optim={"lr": 0.05, "batch_size": 8, "iterations": 6},
                                checkpoint={"every": 1000})
        record = launch(str(cfg), ["target"], options)
        jobs[name] = record.job(record.jobs[0])
    slurm_cluster.wait_for_step(jobs["cut"], 20, 600)
    jobs["cut"]._interrupt()  # scancel --signal=USR2 to the allocation
    cut = sorted(jobs["cut"].results(), key=lambda r: r["rank"])
    whole = sorted(jobs["whole"].results(), key=lambda r: r["rank"])
    assert 0 < (cut[0]["resumed_from"] or 0) < 600, cut
    assert [r["steps"] for r in cut] == [600, 600] and len({r["host"] for r in cut}) == 2
    assert "stopping at step" in jobs["cut"].stderr()
    assert whole[0]["resumed_from"] is None
    a = load_checkpoint(cut[0]["checkpoint"])["model"]
    b = load_checkpoint(whole[0]["checkpoint"])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _kill_node(node: str) -> int:
    """Lose a node for real: SIGKILL every process in its network namespace (its slurmd,
    job steps and the rank running there); returns how many."""
    ns = os.stat(f"/run/netns/{node}").st_ino
    victims = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.stat(proc / "ns" / "net").st_ino == ns:
                victims.append(int(proc.name))
        except OSError:
            continue
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def _restarts(cluster, job) -> int:
    return int(cluster.scontrol_job(job.job_id).get("Restarts", 0))


def test_lost_node_requeues_the_job_which_resumes_when_the_node_returns(
        slurm_cluster, tmp_path, mnist_tree):
    """A node dies mid-run (all its processes, slurmd included): SLURM marks it DOWN and
    requeues the 2-node job; `last.pt` is intact, `hpt-hpc status` says where things stand,
    the dependant waits; when the node is back the job resumes from `last.pt` and the
    chain completes."""
    stages = {"base": {"dataset": "mnist", "variant": "scratch", "iterations": 200},
              "target": {"dataset": "mnist", "init": "stage:base", "iterations": 4}}
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree}, stages, progress_seconds=0.2,
                            optim={"lr": 0.05, "batch_size": 8, "iterations": 6},
                            checkpoint={"every": 10})
    options = build_options("dev", nodes=2, tasks_per_node=1, partition=TWO_NODES)
    record = launch(str(cfg), ["base", "target"], options)
    base, target = (record.job(e) for e in record.jobs)
    slurm_cluster.wait_for_step(base, 30, 200)
    restarted = False
    try:
        assert _kill_node("hptdevn2") >= 2  # slurmd + at least the rank's process
        # requeued: the controller restarts it, and accounting has closed the failed
        # attempt and opened the next (its newest record no longer says NODE_FAIL)
        end = time.monotonic() + 240
        while _restarts(slurm_cluster, base) < 1 or \
                slurm_cluster.attempts(base.job_id)[-2:-1] != ["NODE_FAIL"]:
            assert time.monotonic() < end, (slurm_cluster.scontrol_job(base.job_id),
                                            slurm_cluster.attempts(base.job_id))
            time.sleep(1)
        saved = load_checkpoint(str(StageLayout(tmp_path / "out", "base").last))["step"]
        assert 10 <= saved < 200  # the resume point is intact
        shown = CliRunner().invoke(cli, ["status", str(tmp_path / "out")])
        assert shown.exit_code == 0, shown.output
        assert re.search(r"base\tjob \S+\tPENDING \(requeued after NODE_FAIL\)\tstep \d+/200 "
                         r"\(\d+%\) \(as of", shown.output), shown.output
        assert re.search(r"target\tjob \S+\tPENDING", shown.output), shown.output
        subprocess.run(["bash", str(REPO / "slurm" / "dev-cluster" / "start.sh"), "--nodes",
                        "2"], check=True, capture_output=True, timeout=300)
        restarted = True
        end = time.monotonic() + 300  # until accounting's newest attempt ended
        while slurm_cluster.sacct(base.job_id, settle_s=0).get("State") != "COMPLETED":
            assert time.monotonic() < end, slurm_cluster.sacct(base.job_id, settle_s=0)
            time.sleep(1)
        results = sorted(base.results(), key=lambda r: r["rank"])
        assert results[0]["resumed_from"] >= saved and results[0]["steps"] == 200
        assert slurm_cluster.wait(target, timeout=300) == "COMPLETED"
    finally:  # the node comes back for the other tests
        if not restarted:
            subprocess.run(["bash", str(REPO / "slurm" / "dev-cluster" / "start.sh"),
                            "--nodes", "2"], check=True, capture_output=True, timeout=300)


def test_sweep_on_both_nodes_logs_to_one_server(slurm_cluster, tmp_path, mnist_tree):
    """Array tasks of a sweep on both nodes, every run logged to one `hpt-hpc mlflow serve`
    on the host (reached on the nodes' bridge): all runs there, finished, from both hosts."""
    from mlflow import MlflowClient

    from hpt_hpc.experiments.sweep import run_sweep
    from hpt_hpc.plan.experiment import load_experiment
    from hpt_hpc.tracking.server import start_server
    handle = start_server(tmp_path / "store", "10.77.0.1", 0)  # the host side of the bridge
    try:
        path = write_tiny_experiment(
            tmp_path, {"mnist": mnist_tree},
            {"s": {"method": ["Target", "HPT"], "dataset": ["mnist"], "steps": [4]}},
            tracking=True, name="two-node-sweep", references=False)
        spec = load_experiment(str(path), [f"tracking.uri={handle.uri}"])
        # two CPUs per task: one unit per node at a time, so the array spreads over both
        options = build_options("dev", executor="slurm", partition=TWO_NODES, cpus_per_task=2)
        _, record = run_sweep(spec, options, max_parallel=2)
        states = {e.job_id: slurm_cluster.wait(record.job(e), timeout=300) for e in record.jobs}
        assert set(states.values()) == {"COMPLETED"}, states
        client = MlflowClient(handle.uri)
        runs = client.search_runs([client.get_experiment_by_name("two-node-sweep")
                                   .experiment_id])
        stages = [r for r in runs if r.data.tags.get("hpt.kind") == "stage"]
        evals = [r for r in runs if r.data.tags.get("hpt.kind") == "eval"]
        assert len(stages) == 3 and len(evals) == 2, [r.data.tags for r in runs]
        assert all(r.info.status == "FINISHED" for r in stages + evals)
        assert {r.data.tags["hpt.host"] for r in stages} == {"hptdevn1", "hptdevn2"}
        for entry in record.jobs:  # no send was ever retried: 0 errors
            assert "store unavailable" not in (record.job(entry).stderr() or "")
    finally:
        handle.stop()
