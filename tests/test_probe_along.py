"""A study's ``probe_at``: one run per seed to its budget, its checkpoints at the listed
steps kept (``checkpoint.at``) and evaluated as cells at their step, with the schedule
caveat in the report; ill-formed ``probe_at`` refused in one line."""
from __future__ import annotations

import csv
import json

import pytest
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.eval.record import write_record_file
from hpt_hpc.plan.experiment import load_experiment
from hpt_hpc.plan.unit_plans import pretrain_plan
from hpt_hpc.plan.units import expand
from hpt_hpc.train import run_plan
from tiny import write_tiny_experiment
from usererror import assert_user_error, run
from verdicts import record


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_study_probes_one_run_per_seed_along_the_way(tmp_path, mnist_tree):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "curve": {"method": ["Target"], "dataset": ["mnist"], "steps": [8],
                  "probe_at": [3, 5], "seed": [0, 1]}})
    spec = load_experiment(str(path))
    dry = invoke("sweep", path, "--dry-run")
    assert "units: 2 pretraining" in dry  # Target once per seed, not once per step
    for seed in (0, 1):
        kept = spec.layout.unit_stage(f"Target-mnist-8st-seed{seed}").kept(3)
        assert f"Target-mnist-8st-seed{seed}-at3-linear: linear (cached) of {kept}" in dry
        assert f"Target-mnist-8st-seed{seed}-at5-linear" in dry
        assert f"Target-mnist-8st-seed{seed}-linear" in dry

    # seed 0 stops right after its step-3 save; the sweep resumes it and still keeps it
    unit = {u.unit_id: u for u in expand(spec).pretrain}["Target-mnist-8st-seed0"]
    assert run_plan(pretrain_plan(spec, unit, None), stop_after=3).steps == 3
    invoke("sweep", path, "--executor", "debug")
    for seed in (0, 1):
        stage = spec.layout.unit_stage(f"Target-mnist-8st-seed{seed}")
        # the listed steps only (checkpoint.every=2 saved 2, 4, 6 too; keep=0 kept none)
        assert stage.kept_checkpoints() == [stage.kept(3), stage.kept(5)]
        for step in (3, 5):
            saved = torch.load(stage.kept(step), weights_only=True)
            assert (saved["step"], saved["total_steps"]) == (step, 8)
    # a kept checkpoint is what the run had at that step: a separate run stopped there
    other = load_experiment(str(path), output_dir=str(tmp_path / "other"))
    alone = {u.unit_id: u for u in expand(other).pretrain}["Target-mnist-8st-seed1"]
    run_plan(pretrain_plan(other, alone, None), stop_after=5)
    ours = torch.load(spec.layout.unit_stage(alone.unit_id).kept(5), weights_only=True)
    theirs = torch.load(other.layout.unit_stage(alone.unit_id).last, weights_only=True)
    assert theirs["step"] == 5 and ours["model"].keys() == theirs["model"].keys()
    assert all(torch.equal(ours["model"][k], theirs["model"][k]) for k in ours["model"])

    # the same checkpoint probed on its own is filed at its step, along its run
    invoke("probe", "--config", tmp_path / "config.yaml", "--dataset", "mnist", "--mode",
           "knn", "--checkpoint", spec.layout.unit_stage(alone.unit_id).kept(5))
    [alone_result] = (tmp_path / "out" / "evaluations").glob("*.json")
    assert (json.loads(alone_result.read_text())["steps"],
            json.loads(alone_result.read_text())["along"]) == (5, 8)
    invoke("report", path, "--from-files", "--out", tmp_path / "report")
    with open(tmp_path / "report" / "tiny-sweep.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["method"] == "Target"]
    assert sorted((int(r["target_steps"]), int(r["along_steps"]), int(r["seed"]))
                  for r in rows) == [(s, 0 if s == 8 else 8, seed) for s in (3, 5, 8)
                                     for seed in (0, 1)]
    md = (tmp_path / "report" / "tiny-sweep.md").read_text()
    assert "| method | no target steps | 3 steps | 5 steps | 8 steps |" in md
    target = next(line for line in md.splitlines() if line.startswith("| Target |"))
    cells = [c.strip() for c in target.split("|")[3:6]]
    assert cells[0].endswith(", of 8-step runs") and cells[1].endswith(", of 8-step runs")
    assert "of 8-step runs" not in cells[2]  # the runs' final checkpoints
    again = invoke("sweep", path, "--dry-run")
    assert "0 pretraining, 0 evaluations" in again


def test_along_cells_are_budgets_of_the_claims_and_the_convergence_rule(tmp_path,
                                                                         mnist_tree):
    experiment = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["Target"], "dataset": ["mnist"], "steps": [2]}})
    rows = []
    for s in range(3):  # Target climbs from its 2,000-step checkpoint to its final 8,000
        rows += [record("Target", 500, s, 0.60, along=8000),
                 record("Target", 2000, s, 0.70, along=8000),
                 record("Target", 8000, s, 0.85), record("HPT", 500, s, 0.80),
                 record("Base", 0, s, 0.70), record("random-init", 0, s, 0.3)]
    for i, rec in enumerate(rows):
        write_record_file(rec, tmp_path / "out" / "units" / f"u{i}" / "results" / f"u{i}.json")
    invoke("report", experiment, "--from-files", "--all-units", "--out", tmp_path / "report")
    md = (tmp_path / "report" / "tiny-sweep.md").read_text()
    lines = md.splitlines()
    # claim 1 compares HPT@500 with the 500-step checkpoint, as with a 500-step budget
    hpt = next(x for x in lines if "| HPT@500 − Target@500 |" in x)
    assert "| supported |" in hpt
    claim1 = next(x for x in lines if x.startswith("| 1 |"))
    assert ("Target@500 is the 500-step checkpoint of 8,000-step runs (their learning-rate "
            "schedule spans 8,000 steps)") in claim1
    # the convergence rule reads the checkpoints as budgets: 2,000 -> 8,000 still gains
    claim2 = next(x for x in lines if "| HPT@500 − Target@8000 |" in x)
    assert "Target not converged at 8000 steps" in claim2 and "from 2000 to 8000" in claim2
    # a cell never mixes a 2,000-step run with 2,000-step checkpoints of longer runs
    write_record_file(record("Target", 2000, 5, 0.7), tmp_path / "out" / "units" / "x" /
                      "results" / "x.json")
    assert_user_error(run("report", experiment, "--from-files", "--all-units", "--out",
                          tmp_path / "r2"),
                      "cell Target@2000 (mnist) mixes the final checkpoints of 2000-step "
                      "runs with checkpoints probed along 8000-step runs")


@pytest.mark.parametrize("study, message", [
    ({"probe_at": ["x"]}, "studies.s.probe_at: 'x' is not a positive integer"),
    ({"probe_at": [8]}, "studies.s.probe_at: step 8 is not below Target's budget of 8 steps"),
    ({"steps": [4, 8], "probe_at": [2]},
     "'Target' has 2 budgets (4, 8); probing along the way trains one run per seed"),
    ({"probe_at": {"HPT": [2]}}, "studies.s.probe_at: 'HPT' is not a method of this study"),
    ({"probe_at": [4], "method": ["Target", "Base+N"]}, "'Base+N' continues the base stage"),
    ({"probe_at": [4], "extra": True},
     "studies: Target@4 is both a budget and a checkpoint probed along 8-step runs"),
])
def test_ill_formed_probe_at_is_refused_in_one_line(tmp_path, mnist_tree, study, message):
    studies = {"s": {"method": ["Target"], "dataset": ["mnist"], "steps": [8], **study}}
    if studies["s"].pop("extra", False):
        studies["t"] = {"method": ["Target"], "dataset": ["mnist"], "steps": [4]}
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, studies)
    assert_user_error(run("sweep", path, "--dry-run"), message)


def test_a_run_finished_before_probe_at_listed_a_step_fails_only_that_evaluation(
        tmp_path, mnist_tree):
    study = {"method": ["Target"], "dataset": ["mnist"], "steps": [4]}
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {"s": study})
    invoke("sweep", path, "--executor", "debug")
    write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {"s": {**study, "probe_at": [3]}})
    stage = load_experiment(str(path)).layout.unit_stage("Target-mnist-4st-seed0")
    # in this process (debug) a failure caught as bad input is exit 2, one line
    assert_user_error(run("sweep", path, "--executor", "debug"),
                      f"1 job(s) failed or did not run: eval Target-mnist-4st-seed0-at3-linear:"
                      f" unit Target-mnist-4st-seed0-at3-linear: its pretraining "
                      f"(Target-mnist-4st-seed0) kept no checkpoint at step 3 "
                      f"({stage.kept(3)})")


def test_the_steps_plot_draws_along_cells_open_and_says_of_which_runs(tmp_path):
    import matplotlib.image

    from hpt_hpc.experiments.plots import Series, plot_lines
    from hpt_hpc.experiments.results import Cell

    def cell(method, steps, along=0):
        return Cell([record(method, steps, s, 0.9, along=along) for s in range(3)])

    along = Series("Target", "Target", [(s, cell("Target", s, 8000 if s < 8000 else 0))
                                        for s in (500, 4000, 8000)])
    finals = Series("HPT", "HPT", [(s, cell("HPT", s)) for s in (500, 4000)])
    path = tmp_path / "steps.png"
    labels = plot_lines(path, "t", "steps", [along, finals], {}, log_x=True)
    assert labels == ["Target (open: 500, 4,000 = checkpoints of 8,000-step runs)", "HPT"]
    assert matplotlib.image.imread(path).shape[2] in (3, 4)
    only_along = Series("Target", "Target", [(500, cell("Target", 500, 2000))])
    assert plot_lines(tmp_path / "b.png", "t", "steps", [only_along], {}) == \
        ["Target (open: 500 = checkpoints of 2,000-step runs)"]
