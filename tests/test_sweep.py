"""Experiment files and sweeps: expansion into units, errors, skip-finished via MLflow
tags, resume of unfinished pretraining, the local executor, and the report."""
from __future__ import annotations

import pytest

from hpt_hpc.config import ConfigError, config_from_dict
from hpt_hpc.experiments.results import rows_from_mlflow
from hpt_hpc.experiments.report import build_report
from hpt_hpc.launch.executors import executor_named
from hpt_hpc.experiments.sweep import default_max_parallel, finished_units, plan_sweep, \
    run_sweep, sweep_tracking
from hpt_hpc.launch.options import build_options
from hpt_hpc.plan.experiment import load_experiment as load_sweep_spec
from hpt_hpc.plan.unit_plans import pretrain_plan, unit_config
from hpt_hpc.plan.units import expand
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
    assert cfg.stages["target"].init.value.endswith("upstream/base/checkpoints/final.pt")
    few = next(u for u in exp.pretrain if u.images == 100)
    assert config_from_dict(unit_config(spec, few)).datasets["mnist"].max_images == 100
    bps = next(u for u in exp.pretrain if u.method == "B+S")
    stage = config_from_dict(unit_config(spec, bps)).stages["target"]
    assert stage.variant == "bn-stats" and "upstream/source" in stage.init.value


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


def test_default_max_parallel(tmp_path):
    """Local: every core, within what the tracking store takes; elsewhere one."""
    from hpt_hpc.device import available_cores
    cores = available_cores()
    assert default_max_parallel(executor_named("local"), None) == cores
    assert default_max_parallel(executor_named("local"), f"sqlite:///{tmp_path}/mlflow.db") == min(cores, 8)
    assert default_max_parallel(executor_named("slurm"), None) == \
        default_max_parallel(executor_named("debug"), None) == 1


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
    for r in rows:  # per-image test predictions came back from the MLflow artifacts
        assert r.predictions.predictions.shape == (1, len(r.predictions.paths))
        assert (r.predictions.predictions[0] == r.predictions.targets).mean() == \
            pytest.approx(r.score)
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
    # A unit's checkpoint evaluated on its own is filed beside the sweep's evaluations
    # (same experiment and pipeline run), with the unit's lineage, but not as the sweep's.
    unit = "HPT-mnist-6st-seed0"
    probe = CliRunner().invoke(cli, ["probe", "--config", str(tmp_path / "config.yaml"),
                                     "--dataset", "mnist", "--mode", "knn", "--checkpoint",
                                     str(spec.layout.unit_stage(unit).final)])
    assert probe.exit_code == 0, probe.output
    [own] = client.search_runs([exp.experiment_id],
                               f"attributes.run_name = 'probe mnist of {unit}'")
    [sweeps] = client.search_runs([exp.experiment_id], f"tags.`hpt.unit` = '{unit}-linear'")
    assert own.data.tags["mlflow.parentRunId"] == sweeps.data.tags["mlflow.parentRunId"]
    for tag in ("hpt.pipeline", "hpt.method", "hpt.stage", "hpt.evaluates",
                "hpt.target_steps", "hpt.queue_size"):
        assert own.data.tags[tag] == sweeps.data.tags[tag], tag
    assert own.data.tags["hpt.evaluates"] == unit and "hpt.sweep" not in own.data.tags
    assert len(rows_from_mlflow(uri, "tiny-sweep", "tiny-sweep")) == len(rows)


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
    curves = probe_curves(cells, list(cells), ["Base", "Target", "HPT"], "mnist")
    assert curves["Target (40 steps)"][1] is not None
    assert curves["HPT (10 steps)"][1] is not None and curves["Base"][1] is not None


def test_seed_probe_axes_and_the_compute_matched_control(tmp_path, mnist_tree, fashion_tree):
    from hpt_hpc.plan.unit_plans import sweep_phases
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree, "fashion": fashion_tree}, {
        "linear": {"method": ["HPT", "Base+N"], "dataset": ["mnist"], "steps": [4],
                   "seed": [0, 1, 2], "probe_labels": [10, "all"],
                   "probe_mode": ["cached", "augmented"]}},
        upstream={"base": {"dataset": "fashion", "iterations": 2, "lr": 0.02}})
    spec = load_sweep_spec(str(path))
    exp = expand(spec)
    assert sorted((u.method, u.seed) for u in exp.pretrain) == \
        sorted((m, s) for m in ("HPT", "Base+N") for s in range(3))
    evals = {u.unit_id: u for u in exp.evals}
    # 6 pretrained x (2 label budgets x 2 probe modes) + raw pixels x 2 + random init x 3
    # seeds x 2 label budgets x 2 probe modes (each mode's claims check against its own)
    assert len(evals) == 6 * 4 + 2 + 12
    assert evals["ref-random-init-mnist-seed2-linear-augmented-10pc"].probe_mode == "augmented"
    low = evals["HPT-mnist-4st-seed1-linear-augmented-10pc"]
    assert (low.probe_mode, low.probe_labels, low.seed) == ("augmented", 10, 1)
    assert "ref-random-init-mnist-seed2-linear-10pc" in evals
    phases = {p.name: p for p in sweep_phases(spec, exp, None)}
    plan = next(p for p in phases["eval"].plans if p.label == low.unit_id)
    assert (plan.config.probe.mode, plan.config.probe.labels_per_class, plan.seed) == \
        ("augmented", 10, 1)
    # The control continues the base stage on base data only, then re-estimates BN on target
    control = phases["control"].plans
    assert [p.seed for p in control] == [0, 1, 2] and len(control) == 3
    assert all(p.stage == "base" and p.dataset == "fashion" and p.iterations == 4
               and p.variant == "full" and p.lr == 0.02 for p in control)
    assert control[0].init.value == str(spec.upstream_checkpoint("base"))
    target = next(p for p in phases["pretrain-continued"].plans
                  if p.method == "Base+N" and p.seed == 0)
    assert (target.variant, target.dataset, str(target.init)) == ("bn-stats", "mnist",
                                                                  "stage:base")
    assert target.init.local_path(target.layout) == control[0].layout.final
    # each pretraining array waits only for the stage its units start from
    assert phases["pretrain-continued"].after == ("control",)
    assert phases["control"].after == ("upstream-base",)
    assert phases["pretrain"].after == ("upstream-base",)
    assert phases["eval"].after == ("pretrain", "pretrain-continued")
    hpt = next(p for p in phases["pretrain"].plans if p.method == "HPT" and p.seed == 2)
    assert hpt.seed == 2 and hpt.config.seed == 2  # the seed varies target pretraining


def test_every_study_shape_runs_and_the_report_computes_verdicts(tmp_path, mnist_tree,
                                                                fashion_tree):
    """A miniature of configs/experiments/mnist-hpt.yaml, in this process, tracking off:
    every axis and method runs, and the report judges the claims from the stored
    per-image predictions (whatever the verdicts of 2-step models are)."""
    from hpt_hpc.experiments.results import rows_from_files
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree, "fashion": fashion_tree}, {
        "linear": {"method": ["Base", "Target", "HPT", "HPT-BN", "HPT-BN-frozen-head"],
                   "dataset": ["mnist"], "steps": {"default": [2], "Target": [2, 8]},
                   "seed": [0, 1]},
        "control": {"method": ["Base+N", "HPT"], "dataset": ["mnist"], "steps": [2],
                    "seed": [0, 1]},
        "transfer": {"method": ["B", "B+S", "B+T", "B+S+T"], "dataset": ["mnist"],
                     "steps": [2]},
        "augmentation": {"method": ["Target", "HPT"], "dataset": ["mnist"], "steps": [2],
                         "augment": ["all", "crop"]},
        "amount": {"method": ["Target", "HPT", "HPT-BN"], "dataset": ["mnist"], "steps": [2],
                   "images": [40, "all"]},
        "low": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2],
                "probe_labels": [2, "all"]},
        "protocol": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2],
                     "probe_mode": ["augmented", "cached"]},
        "semi": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2],
                 "evaluate": ["finetune"]}},
        upstream={"base": {"dataset": "fashion", "iterations": 2},
                  "source": {"dataset": "mnist", "iterations": 2}},
        set=["finetune.labels=20", "finetune.iterations=4", "finetune.batch_size=8",
             "finetune.eval_every=2"])
    spec = load_sweep_spec(str(path))
    plan, _ = run_sweep(spec, build_options(None, executor="debug"))
    rows = rows_from_files(spec.output_dir)
    assert len(rows) == len(plan.evals) and all(r.predictions is not None for r in rows)
    amount = next(r for r in rows if r.images == "40" and r.method == "HPT")
    assert (amount.pretrain_images, amount.queue_size) == (40, 40)  # K=64 capped to the data
    report = build_report(rows, tmp_path / "report", "mini").path.read_text()
    for claim in ("| 1 | HPT beats Base and Target", "| 3 | B+S+T is best",
                  "| 4 | HPT degrades less", "| 5 | HPT beats Target, and HPT-BN",
                  "| C | HPT's gain over Base"):
        assert claim in report
    assert "HPT@2 − Base+N@2" in report and "paired t: per-seed differences" in report
    assert "low-label probing" in report and "2 labels/class" in report
    assert "protocol check" in report and "HPT-BN-frozen-head" in report
    assert "40 (40)" in report  # the data-amount table names queue and images
    header = (tmp_path / "report" / "mini.csv").read_text().splitlines()[0]
    assert "score_pct" in header and "queue_size_keys" in header


def test_a_study_set_changes_only_its_own_evaluations(tmp_path, mnist_tree):
    from hpt_hpc.plan.unit_plans import eval_plan
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "main": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]},
        "check": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2],
                  "probe_mode": ["augmented"], "set": ["probe.iterations=7"]}})
    spec = load_sweep_spec(str(path))
    exp = expand(spec)
    assert len(exp.pretrain) == 1  # the pretraining unit is shared
    evals = {u.unit_id: u for u in exp.evals}
    check = next(u for u in evals.values() if u.probe_mode == "augmented")
    assert check.unit_id.startswith("HPT-mnist-2st-seed0-linear-augmented-s")
    assert eval_plan(spec, check, None).config.probe.iterations == 7
    plain = evals["HPT-mnist-2st-seed0-linear"]
    assert eval_plan(spec, plain, None).config.probe.iterations == 20
    write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["HPT"], "dataset": ["mnist"], "set": ["optim.lr=9"]}})
    with pytest.raises(ConfigError, match="changes only its evaluations"):
        load_sweep_spec(str(path))
