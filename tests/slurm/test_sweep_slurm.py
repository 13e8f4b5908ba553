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
    [hpt], [target] = entries["pretrain"], entries["pretrain-scratch"]
    pretrain, evals = [hpt, target], entries["eval"]
    assert len(evals) == 2
    assert hpt.depends_on == [base.job_id]  # HPT starts from base: it waits for base
    assert target.depends_on == []          # Target starts from scratch: at once
    assert all(sorted(e.depends_on) == sorted([hpt.job_id, target.job_id]) for e in evals)
    states = {e.job_id: slurm_cluster.wait(record.job(e), timeout=240) for e in record.jobs}
    assert set(states.values()) == {"COMPLETED"}, states
    ends = {e.job_id: slurm_cluster.sacct(e.job_id) for e in record.jobs}
    assert ends[hpt.job_id]["Start"] >= ends[base.job_id]["End"]
    last_pretrain = max(ends[p.job_id]["End"] for p in pretrain)
    assert all(ends[e.job_id]["Start"] >= last_pretrain for e in evals)
    done = finished_units(spec, record.tracking_uri)
    assert {"upstream-base", "Target-mnist-2st-seed0", "HPT-mnist-2st-seed0-linear"} <= done
    again = plan_sweep(load_sweep_spec(str(path)), sweep_tracking(spec))
    assert (again.upstream, again.pretrain, again.evals) == ([], [], [])
