"""Base seeds: a study crosses base (and source) seeds with target seeds; every base seed
trains its own upstream stages, no unit shares a checkpoint across base seeds, and the
report's intervals cover both levels and say so."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

from hpt_hpc.cli.main import cli
from hpt_hpc.eval.record import write_record_file
from hpt_hpc.plan.experiment import load_experiment
from hpt_hpc.plan.unit_plans import sweep_phases, unit_config
from hpt_hpc.plan.units import expand
from tiny import write_tiny_experiment
from verdicts import TARGETS, record


def invoke(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_base_seeds_train_their_own_upstream_and_units(tmp_path, mnist_tree):
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["Target", "HPT"], "dataset": ["mnist"], "steps": [2],
              "seed": [0, 1], "base_seed": [0, 1]}})
    spec = load_experiment(str(path))
    units = {u.unit_id: u for u in expand(spec).pretrain}
    # Target starts from no base: once per target seed; HPT per base x target seed
    assert sorted(units) == ["HPT-mnist-2st-seed0", "HPT-mnist-2st-seed0-b1",
                             "HPT-mnist-2st-seed1", "HPT-mnist-2st-seed1-b1",
                             "Target-mnist-2st-seed0", "Target-mnist-2st-seed1"]
    inits = {uid: unit_config(spec, u)["stages"]["target"]["init"]
             for uid, u in units.items() if u.method == "HPT"}
    assert inits["HPT-mnist-2st-seed1-b1"] == str(spec.upstream_checkpoint("base", 1))
    assert inits["HPT-mnist-2st-seed0"] == str(spec.upstream_checkpoint("base"))
    assert "/upstream-b1/base/" in inits["HPT-mnist-2st-seed0-b1"]
    [upstream] = [p for p in sweep_phases(spec, expand(spec), None) if p.name == "upstream-base"]
    assert [(p.label, p.config.seed) for p in upstream.plans] == [("base", 0), ("base-b1", 1)]
    # for real, through the CLI: two bases trained, each HPT from its own, the report's
    # CSV names the base seed of every evaluation
    out = invoke("sweep", str(path), "--executor", "debug")
    assert "upstream [base (base seeds 0, 1)]" in out
    for b in (0, 1):
        assert spec.upstream_checkpoint("base", b).is_file()
    invoke("report", str(path), "--from-files", "--out", str(tmp_path / "report"))
    with open(tmp_path / "report" / "tiny-sweep.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    hpt = sorted((r["base_seed"], r["seed"]) for r in rows if r["method"] == "HPT")
    assert hpt == [("0", "0"), ("0", "1"), ("1", "0"), ("1", "1")]
    assert {r["base_seed"] for r in rows if r["method"] == "Target"} == {"0"}
    again = invoke("sweep", str(path), "--dry-run")
    assert "to run: upstream [none], 0 pretraining, 0 evaluations" in again
    # the file drops HPT: its report leaves HPT's finished evaluations out, and says so
    write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["Target"], "dataset": ["mnist"], "steps": [2], "seed": [0, 1]}})
    out = invoke("report", str(path), "--from-files", "--out", str(tmp_path / "r2"))
    assert ("report: left out 4 evaluation(s) of units " f"{path} no longer plans "
            "(HPT-mnist-2st-seed0-b1-linear, HPT-mnist-2st-seed0-linear, "
            "HPT-mnist-2st-seed1-b1-linear, ...); --all-units includes them") in out
    with open(tmp_path / "r2" / "tiny-sweep.csv", newline="") as handle:
        assert sorted({r["method"] for r in csv.DictReader(handle)}) == [
            "Target", "random-init", "raw-pixels"]
    invoke("report", str(path), "--from-files", "--all-units", "--out", str(tmp_path / "r3"))
    with open(tmp_path / "r3" / "tiny-sweep.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    import hpt_hpc  # the API reads the same rows: the file's units, or the folder's all
    assert "HPT" not in {r["method"] for r in hpt_hpc.results(path, as_frame=False)}
    assert len(hpt_hpc.results(tmp_path / "out", as_frame=False)) == len(rows)


def test_a_given_base_checkpoint_has_no_seed_to_vary(tmp_path, mnist_tree):
    base = tmp_path / "base.pt"
    base.write_bytes(b"x")
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["HPT"], "dataset": ["mnist"], "base_seed": [0, 1]}},
        upstream={"base": {"checkpoint": str(base)}})
    result = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run"])
    assert result.exit_code == 2 and result.output.startswith(
        "error: ") and "base_seed: upstream.base is a given checkpoint" in result.output


def test_report_intervals_cover_both_levels(tmp_path, mnist_tree):
    experiment = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}})
    rows = []
    for b, shift in ((0, 0.0), (1, 0.04), (2, -0.03)):  # the base moves HPT's accuracy
        for s in range(3):
            rows += [record("HPT", 50, s, 0.90 + shift, base_seed=b),
                     record("Base", 0, s, 0.85 + shift, base_seed=b)]
    for s in range(3):
        rows += [record("Target", 50, s, 0.80), record("random-init", 0, s, 0.5)]
    for i, rec in enumerate(rows):
        uid = f"u{i}"
        write_record_file(rec, tmp_path / "out" / "units" / uid / "results" / f"{uid}.json")
    invoke("report", str(experiment), "--from-files", "--all-units", "--out",
           str(tmp_path / "report"))
    md = (tmp_path / "report" / "tiny-sweep.md").read_text()
    line = next(x for x in md.splitlines() if "| HPT@50 − Target@50 |" in x)
    assert "| 3 base × 3 target seeds |" in line
    # by hand: per-base means of the per-pair differences, a t over the 3 bases (df 2);
    # the image part (two-way variance) widens it, so the interval holds this one
    score = {(r.method, r.base_seed, r.seed): r.score for r in rows}
    means = [np.mean([score[("HPT", b, s)] - score[("Target", 0, s)] for s in range(3)])
             for b in range(3)]
    low, high = stats.ttest_1samp(means, 0).confidence_interval(0.95)
    found = [float(x) for x in re.search(r"\| ([+-]\d+\.\d) \[([+-]\d+\.\d), "
                                         r"([+-]\d+\.\d)\] \|", line).groups()]
    assert found[0] == pytest.approx(100 * np.mean(means), abs=0.051)
    assert found[1] <= round(100 * low, 1) and found[2] >= round(100 * high, 1)
    pairs = [score[("HPT", b, s)] - score[("Target", 0, s)] for b in range(3)
             for s in range(3)]
    naive = stats.ttest_1samp(pairs, 0).confidence_interval(0.95)  # 9 pairs as if one level
    assert found[2] - found[1] > 100 * (naive[1] - naive[0])
    assert "(n=3 base × 3 target)" in md  # the cells say it too
    assert np.array_equal(TARGETS, rows[0].predictions.targets)
