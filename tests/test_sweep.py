"""Experiment files and sweeps: expansion into units, errors, skip-finished via MLflow
tags, resume of unfinished pretraining, the local executor, and the report."""
from __future__ import annotations

import pytest

from hpt_hpc.config import ConfigError, config_from_dict
from hpt_hpc.experiments.results import rows_from_mlflow
from hpt_hpc.experiments.report import build_report
from hpt_hpc.experiments.sweep import finished_units, plan_sweep, run_sweep, sweep_tracking
from hpt_hpc.launch.options import build_options
from hpt_hpc.plan.experiment import load_experiment as load_sweep_spec
from hpt_hpc.plan.units import expand, pretrain_plan, unit_config
from tiny import write_tiny_experiment


def test_expansion_dedupes_aliases_and_adds_references(tmp_path, mnist_tree):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "linear": {"method": ["Base", "Target", "HPT", "HPT-BN"], "dataset": ["mnist"],
                   "steps": [50, 500], "seed": [0, 1]},
        "transfer": {"method": ["B", "B+S", "B+T", "B+S+T"], "dataset": ["mnist"],
                     "steps": [500]},
        "augment": {"method": ["HPT"], "dataset": ["mnist"], "steps": [500],
                    "augment": ["all", "crop", "no-color-jitter"]},
        "amount": {"method": ["HPT"], "dataset": ["mnist"], "steps": [500],
                   "images": [100, "all"], "evaluate": ["linear", "finetune"]}},
        upstream={"base": {"dataset": "mnist", "iterations": 2},
                  "source": {"dataset": "mnist", "iterations": 2}})
    spec = load_sweep_spec(str(path))
    exp = expand(spec)
    ids = [u.unit_id for u in exp.pretrain]
    assert len(ids) == len(set(ids))
    # Base ignores the step budget: one unit per seed, shared with transfer's B.
    assert [u.unit_id for u in exp.pretrain if u.method == "Base"] == \
        ["Base-mnist-0st-seed0", "Base-mnist-0st-seed1"]
    # 2 seeds x (Base + 3 methods x 2 budgets) + B+S + B+S+T + 2 augmentations + 1 amount
    assert len(exp.pretrain) == 2 * (1 + 3 * 2) + 2 + 2 + 1
    hpt = next(u for u in exp.pretrain if u.unit_id == "HPT-mnist-500st-seed0")
    assert set(hpt.studies) == {"linear", "transfer", "augment", "amount"}
    evals = {u.unit_id: u for u in exp.evals}
    assert "ref-raw-pixels-mnist-linear" in evals and "ref-random-init-mnist-seed0-linear" in evals
    assert evals["HPT-mnist-500st-seed0-n100-finetune"].pretrain == "HPT-mnist-500st-seed0-n100"
    assert evals["HPT-mnist-500st-seed0-finetune"].protocol == "finetune"
    assert exp.upstream == ["base", "source"]
    crop = next(u for u in exp.pretrain if u.augment == "crop")
    cfg = config_from_dict(unit_config(spec, crop, init_uri=None))
    assert cfg.augment.crop.enabled and not cfg.augment.color_jitter.enabled
    assert not cfg.augment.blur.enabled and not cfg.augment.flip.enabled
    assert cfg.stages["target"].init.endswith("upstream/base/checkpoints/final.pt")
    few = next(u for u in exp.pretrain if u.images == 100)
    assert config_from_dict(unit_config(spec, few)).datasets["mnist"].max_images == 100
    bps = next(u for u in exp.pretrain if u.method == "B+S")
    stage = config_from_dict(unit_config(spec, bps)).stages["target"]
    assert stage.variant == "bn-stats" and "upstream/source" in stage.init


@pytest.mark.parametrize("studies, extra, message", [
    ({"s": {"method": ["HPT"], "dataset": ["mnist"], "step": [5]}}, {}, "did you mean 'steps'"),
    ({"s": {"method": ["HTP"], "dataset": ["mnist"]}}, {}, "unknown method 'HTP'"),
    ({"s": {"method": ["HPT"], "dataset": ["mnist"], "augment": ["no-colour"]}}, {},
     "unknown preset"),
    ({"s": {"method": ["B+S+T"], "dataset": ["mnist"]}}, {}, "define upstream.source"),
    ({"s": {"method": ["HPT"], "dataset": ["cifar"]}}, {}, "'cifar' is not defined"),
    ({"s": {"method": ["HPT"], "steps": [5]}}, {}, "give a dataset axis"),
    ({"s": {"method": ["HPT"], "dataset": ["mnist"]}}, {"studys": {}}, "unknown key 'studys'"),
])
def test_experiment_file_errors_are_clear(tmp_path, mnist_tree, studies, extra, message):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, studies, **extra)
    with pytest.raises(ConfigError, match=message):
        load_sweep_spec(str(path))


def test_sweep_skips_finished_units_and_resumes_unfinished(tmp_path, mnist_tree):
    """Local executor first (separate processes), then re-runs in this process: finished
    units (MLflow tags) are skipped, a failed evaluation and a half-trained unit are
    re-run, the half-trained one resuming from its last checkpoint."""
    from hpt_hpc.tracking.store import client_for
    from hpt_hpc.train import run_plan
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "linear": {"method": ["Base", "HPT"], "dataset": ["mnist"], "steps": [4]}},
        tracking=True)
    spec = load_sweep_spec(str(path))
    plan, record = run_sweep(spec, build_options(None, executor="local"), max_parallel=2)
    assert [len(plan.upstream), len(plan.pretrain), len(plan.evals)] == [1, 2, 4]
    uri = record.tracking_uri
    everything = {"upstream-base"} | {u.unit_id for u in plan.pretrain} | \
        {u.unit_id for u in plan.evals}
    assert finished_units(spec, uri) == everything
    assert {e.stage for e in record.jobs} == {"upstream-base", "pretrain", "eval"}

    again = plan_sweep(load_sweep_spec(str(path)), sweep_tracking(spec))
    assert (again.upstream, again.pretrain, again.evals) == ([], [], [])

    # An evaluation that failed, and a pretraining unit stopped half-way (3 new units).
    client = client_for(uri)
    exp = client.get_experiment_by_name("tiny-sweep")
    [failed] = client.search_runs([exp.experiment_id],
                                  "tags.`hpt.unit` = 'Base-mnist-0st-seed0-linear'")
    client.set_terminated(failed.info.run_id, "FAILED")
    spec = load_sweep_spec(str(path))
    spec.studies[0].axes["steps"] = [4, 6]
    half = next(u for u in expand(spec).pretrain if u.unit_id == "HPT-mnist-6st-seed0")
    stopped = run_plan(pretrain_plan(spec, half, sweep_tracking(spec)), stop_after=3)
    assert not stopped.completed and stopped.steps == 3

    plan, record = run_sweep(spec, build_options(None, executor="debug"))
    assert [u.unit_id for u in plan.pretrain] == ["HPT-mnist-6st-seed0"]
    assert sorted(u.unit_id for u in plan.evals) == ["Base-mnist-0st-seed0-linear",
                                                     "HPT-mnist-6st-seed0-linear"]
    [resumed] = client.search_runs([exp.experiment_id],
                                   "tags.`hpt.unit` = 'HPT-mnist-6st-seed0'")
    assert resumed.info.run_id == stopped.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["hpt.resumes"] == "1"
    assert resumed.data.tags["hpt.steps"] == "6"

    rows = rows_from_mlflow(uri, "tiny-sweep", "tiny-sweep")
    methods = sorted((r.method, r.steps) for r in rows)
    assert methods == [("Base", 0), ("HPT", 4), ("HPT", 6), ("random-init", 0),
                       ("raw-pixels", 0)]
    assert all(r.mode.startswith("cached") and len(r.curve) == 2 for r in rows)
    # `hpt-hpc runs` shows the sweep's evaluation scores (the one evaluation record)
    from click.testing import CliRunner
    from hpt_hpc.cli.main import cli
    table = CliRunner().invoke(cli, ["runs", "--uri", uri, "--pipeline", "tiny-sweep"])
    assert table.exit_code == 0, table.output
    line = next(ln for ln in table.output.splitlines() if ln.startswith("HPT-mnist-6st-seed0-linear"))
    score = next(r.score for r in rows if (r.method, r.steps) == ("HPT", 6))
    assert f"{100 * score:.1f}%" in line and "eval" in line
    report = build_report(rows, tmp_path / "report", "tiny-sweep")
    text = report.path.read_text()
    assert "| HPT |  | " in text and "raw pixels (reference)" in text
    assert "random init (reference)" in text and "4 steps | 6 steps" in text
    assert all(p.is_file() and p.stat().st_size > 5000 for p in report.plots)


def test_paths_in_an_experiment_file_are_relative_to_it(tmp_path, mnist_tree, monkeypatch):
    import shutil
    folder = tmp_path / "exp" / "nested"
    folder.mkdir(parents=True)
    shutil.copytree(mnist_tree, tmp_path / "exp" / "digits")
    import yaml
    path = write_tiny_experiment(folder, {"mnist": mnist_tree},
                                 {"s": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}})
    data = yaml.safe_load(path.read_text())
    data.update(datasets={"mnist": {"path": "../digits"}}, output_dir="../out")
    path.write_text(yaml.safe_dump(data))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    spec = load_sweep_spec(str(folder / "experiment.yaml"))
    assert spec.output_dir == tmp_path / "exp" / "out"
    assert spec.config["datasets"]["mnist"]["path"] == str(tmp_path / "exp" / "digits")
    assert spec.base_config().output_dir == str(tmp_path / "exp" / "out")
    given = load_sweep_spec(str(folder / "experiment.yaml"), output_dir="mine")
    assert given.output_dir == elsewhere / "mine"  # a command-line path: the working dir


def test_per_method_step_budgets_and_the_report_keeps_every_method(tmp_path, mnist_tree):
    from hpt_hpc.eval.record import EvalRecord
    from hpt_hpc.experiments.report import probe_curves
    from hpt_hpc.experiments.results import group_cells
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "linear": {"method": ["Base", "Target", "HPT"], "dataset": ["mnist"],
                   "steps": {"default": [5, 10], "Target": [10, 40]}}})
    units = {(u.method, u.steps) for u in expand(load_sweep_spec(str(path))).pretrain}
    assert units == {("Base", 0), ("HPT", 5), ("HPT", 10), ("Target", 10), ("Target", 40)}
    with pytest.raises(ConfigError, match="'HPT-BN' is not a method of this study"):
        write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
            "s": {"method": ["HPT"], "dataset": ["mnist"], "steps": {"HPT-BN": [5]}}})
        load_sweep_spec(str(path))
    # The probe-curve plot draws every method at its own largest budget.
    rows = [EvalRecord("linear", m, "mnist", "cached", "top1", 0.5, steps=s,
                       curve=[(10, 0.4, 0.5)]) for m, s in sorted(units)]
    cells = group_cells(rows)
    curves = probe_curves(cells, rows, ["Base", "Target", "HPT"], "mnist")
    assert curves["Target (40 steps)"] is not None and curves["HPT (10 steps)"] is not None
    assert curves["Base"] is not None
