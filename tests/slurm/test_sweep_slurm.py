"""`hpt-hpc sweep` on the real dev cluster: upstream job -> pretraining array (afterok)
-> evaluation array (afterany), results in MLflow, nothing left to run afterwards."""
from __future__ import annotations

import pytest

from hpt_hpc.experiments.sweep import finished_units, plan_sweep, run_sweep, sweep_tracking
from hpt_hpc.plan.experiment import load_experiment as load_sweep_spec
from hpt_hpc.launch.options import build_options
from tiny import write_tiny_experiment

pytestmark = pytest.mark.slurm


def test_sweep_runs_as_dependent_arrays(slurm_cluster, tmp_path, mnist_tree):
    path = write_tiny_experiment(
        tmp_path, {"mnist": mnist_tree},
        {"s": {"method": ["Target", "HPT"], "dataset": ["mnist"], "steps": [2]}},
        tracking=True, name="slurm-sweep", references=False)
    spec = load_sweep_spec(str(path))
    plan, record = run_sweep(spec, build_options("dev", executor="slurm"), max_parallel=2)
    entries = {e.stage: [x for x in record.jobs if x.stage == e.stage] for e in record.jobs}
    [base] = entries["upstream-base"]
    pretrain, evals = entries["pretrain"], entries["eval"]
    assert len(pretrain) == 2 and len(evals) == 2
    array = {e.job_id.split("_")[0] for e in pretrain}
    assert len(array) == 1, "pretraining units form one array"
    assert all(e.depends_on == [base.job_id] for e in pretrain)
    assert all(e.depends_on == sorted(array) for e in evals)
    states = {e.job_id: slurm_cluster.wait(record.job(e), timeout=240) for e in record.jobs}
    assert set(states.values()) == {"COMPLETED"}, states
    ends = {e.job_id: slurm_cluster.sacct(e.job_id) for e in record.jobs}
    assert all(ends[p.job_id]["Start"] >= ends[base.job_id]["End"] for p in pretrain)
    last_pretrain = max(ends[p.job_id]["End"] for p in pretrain)
    assert all(ends[e.job_id]["Start"] >= last_pretrain for e in evals)
    done = finished_units(spec, record.tracking_uri)
    assert {"upstream-base", "Target-mnist-2st-seed0", "HPT-mnist-2st-seed0-linear"} <= done
    again = plan_sweep(load_sweep_spec(str(path)), sweep_tracking(spec))
    assert (again.upstream, again.pretrain, again.evals) == ([], [], [])
