"""Evidence: seed intervals, the paired-t difference checked against scipy and a hand
ANOVA, its measured coverage (a fast version of benchmarks/coverage.py), Holm's
correction, the verdict rule, and per-image predictions that round-trip."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from hpt_hpc.eval.record import read_record_files, write_record_file
from hpt_hpc.experiments.claims import Claim
from hpt_hpc.experiments.evidence import (CONTRADICTED, EQUIVALENT, INCONCLUSIVE, SUPPORTED,
                                          UNRESOLVED, Difference, Judgement, Term, combine,
                                          holm, judge, paired_t, seed_interval, term)
from verdicts import TARGETS, predictions_with_accuracy, record

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "coverage.py"


def test_seed_interval_is_a_student_t_interval():
    values = [0.90, 0.92, 0.94]
    interval = seed_interval(values)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert interval.mean == pytest.approx(0.92) and interval.n == 3
    assert (interval.low, interval.high) == pytest.approx((0.92 - half, 0.92 + half))
    assert np.isnan(seed_interval([0.9]).low) and "(n=1)" in seed_interval([0.9]).text()


def test_the_interval_at_its_edges_matches_scipy():
    d = [0.031, -0.004, 0.052]
    # no image variance: the one-sample t-interval of the per-seed differences
    low, high = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    diff = combine(d, 0.0)
    assert (diff.low, diff.high) == pytest.approx((low, high), abs=1e-12)
    assert diff.p_above_zero() == pytest.approx(stats.ttest_1samp(d, 0,
                                                                  alternative="greater").pvalue)
    # no seed variance: the image part alone, with the seeds' 2 degrees of freedom
    flat = combine([0.02] * 3, 0.0001)
    assert flat.high - 0.02 == pytest.approx(stats.t.ppf(0.975, 2) * 0.01)
    with pytest.raises(ValueError, match="at least 2 seeds"):
        combine([0.02], 0.0)


def test_paired_t_is_the_two_way_variance_of_the_mean_by_hand():
    rng = np.random.default_rng(3)  # each cell has its own easy and hard images
    a = (rng.random((3, 200)) < rng.uniform(0.5, 1, 200)).astype(float)
    b = (rng.random((3, 200)) < rng.uniform(0.4, 1, 200)).astype(float)
    diff = paired_t([Term(1, a), Term(-1, b)])
    d = a - b
    S, N = d.shape
    grand = sum(sum(row) for row in d) / (S * N)
    rows = [sum(row) / N for row in d]
    cols = [sum(d[s][i] for s in range(S)) / S for i in range(N)]
    ms_seed = N * sum((r - grand) ** 2 for r in rows) / (S - 1)
    ms_image = S * sum((c - grand) ** 2 for c in cols) / (N - 1)
    ms_err = sum((d[s][i] - rows[s] - cols[i] + grand) ** 2
                 for s in range(S) for i in range(N)) / ((S - 1) * (N - 1))
    assert diff.estimate == pytest.approx(grand)
    assert diff.se ** 2 == pytest.approx((ms_seed + ms_image - ms_err) / (S * N))
    assert ms_image > ms_err and diff.df == 2 and diff.seeds == 3
    # without an image effect the image part would be negative: the seed part alone
    flat = (rng.random((3, 200)) < 0.8).astype(float)
    plain = paired_t([Term(1, flat), Term(-1, flat[::-1])])
    assert plain.se ** 2 == pytest.approx(np.var(flat.mean(1) - flat[::-1].mean(1),
                                                 ddof=1) / 3)
    same = [predictions_with_accuracy(0.9, s) for s in range(3)]
    zero = paired_t([term(1, same, TARGETS), term(-1, same, TARGETS)])
    assert (zero.estimate, zero.low, zero.high) == (0.0, 0.0, 0.0)


def test_paired_t_recovers_a_planted_shift_and_scores_auroc():
    better = [predictions_with_accuracy(0.90, 10 + s) for s in range(3)]
    worse = [predictions_with_accuracy(0.80, 20 + s) for s in range(3)]
    diff = paired_t([term(1, better, TARGETS), term(-1, worse, TARGETS)])
    assert 0 < diff.low < 0.10 < diff.high and diff.estimate == pytest.approx(0.10, abs=0.02)
    hot = np.eye(3)[np.arange(60) % 3]
    good = [hot[None] + 0.1 * np.random.default_rng(s).random((1, 60, 3)) for s in range(3)]
    noise = [np.random.default_rng(9 + s).random((1, 60, 3)) for s in range(3)]
    assert paired_t([term(1, good, hot), term(-1, noise, hot)]).low > 0.2
    with pytest.raises(ValueError, match="different numbers of seeds"):
        paired_t([term(1, better, TARGETS), term(-1, worse[:2], TARGETS)])


@pytest.mark.parametrize("seed_sd, seeds", [(0.005, 3), (0.04, 3), (0.04, 5)])
def test_measured_coverage_holds_the_goal(seed_sd, seeds):
    """The benchmark at test size: fixed RNG seed, 1,500 repetitions (binomial SE 0.6 % at
    95 %; measured 96-99.6 %, so the 93 % bound has > 4 SE room)."""
    spec = importlib.util.spec_from_file_location("coverage_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    null = bench.simulate(seed_sd, seeds, 0.0, reps=1500, rng_seed=11)
    assert null["true_difference_points"] == 0.0
    assert null["paired_t"]["coverage"] >= 0.93 and null["paired_t"]["supported"] <= 0.03
    shifted = bench.simulate(seed_sd, seeds, 0.03, reps=1500, rng_seed=12)
    assert shifted["true_difference_points"] > 1.5
    assert shifted["paired_t"]["coverage"] >= 0.93


def test_measured_coverage_over_base_and_target_seeds():
    """The two-level benchmark at test size (measured 97.7 % / 1.1 % at 4,000 reps)."""
    spec = importlib.util.spec_from_file_location("coverage_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.simulate_two_level(0.04, 0.02, 0.0, reps=1000, rng_seed=5)
    assert result["coverage"] >= 0.93 and result["supported"] <= 0.03


def test_holm_against_its_definition():
    assert holm([0.01, 0.02, 0.04], 0.05) == [True, True, True]  # .0167, .025, .05
    assert holm([0.02, 0.03, 0.04], 0.05) == [False, False, False]  # .02 > .0167
    assert holm([0.04, 0.001, 0.03], 0.05) == [False, True, False]  # .03 > .025 stops
    # claim 2's rule "any": one comparison supported alone (p ~ .02 < .025) is not enough
    # among two (Holm needs p < .0125); a strong one is
    weak = Difference(0.02, 0.02 / stats.t.ppf(0.98, 2), 2, 3)
    strong = Difference(0.05, 0.05 / stats.t.ppf(0.999, 2), 2, 3)
    unclear = Difference(0.0, 0.03, 2, 3)
    claim = Claim("2", "x", "any", judgements=[judge("a", weak), judge("b", unclear)])
    assert claim.judgements[0].verdict == SUPPORTED
    assert claim.verdict[0] == UNRESOLVED and "none supported after Holm" in claim.verdict[1]
    claim.judgements.append(judge("c", strong))
    assert claim.verdict == (SUPPORTED, "1 of 3 comparison(s) supported after Holm's "
                                        "correction (the claim's rule: any)")


@pytest.mark.parametrize("estimate, half, unmet, verdict", [
    (0.03, 0.02, [], SUPPORTED), (-0.03, 0.02, [], CONTRADICTED),
    (0.001, 0.008, [], EQUIVALENT), (0.002, 0.015, [], UNRESOLVED),
    (0.03, 0.02, ["Target below random init"], INCONCLUSIVE)])
def test_verdict_rule(estimate, half, unmet, verdict):
    judgement = judge("x", Difference(estimate, half / stats.t.ppf(0.975, 2), 2, 3), unmet,
                      margin=0.01)
    assert judgement.verdict == verdict
    assert judgement.reasons == (unmet if verdict == INCONCLUSIVE else [])
    assert isinstance(judgement, Judgement)


def test_predictions_round_trip_through_result_files(tmp_path):
    rec = record("HPT", 50, 0, 0.9)
    write_record_file(rec, tmp_path / "units/u/results/e.json", {"tags": {"a": "b"}})
    assert (tmp_path / "units/u/results/e.npz").is_file()
    [back] = read_record_files([tmp_path / "units/u/results/e.json"])
    assert np.array_equal(back.predictions.predictions, rec.predictions.predictions)
    assert np.array_equal(back.predictions.targets, TARGETS)
    assert back.predictions.paths[:2] == ["img0.png", "img1.png"] and back.score == rec.score
    with np.load(tmp_path / "units/u/results/e.npz", allow_pickle=False) as raw:
        assert raw["predictions"].dtype == np.int16  # compact


def test_committed_verdicts_are_the_csv_recomputed(capsys):
    """docs/results: the recomputed verdict table is the script's output on the committed
    CSV, and one interval of it matches scipy's t-interval of the per-seed differences."""
    import csv
    import runpy
    results = Path(__file__).resolve().parents[1] / "docs" / "results" / "2026-12-01"
    runpy.run_path(str(results / "verdicts_from_csv.py"), run_name="__main__")
    table = capsys.readouterr().out
    assert table.strip() in (results / "mnist-hpt.md").read_text()
    with open(results / "mnist-hpt.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["protocol"] == "linear"
                and r["mode"] == "cached" and r["probe_labels_per_class"] == "all"
                and r["augment"] == "all" and r["images_axis"] == "all"]
    score = {(r["method"], r["target_steps"], r["seed"]): float(r["score_pct"]) for r in rows}
    d = [score[("HPT", "50", s)] - score[("Base", "0", s)] for s in "012"]
    low, high = stats.ttest_1samp(d, 0).confidence_interval(0.95)
    assert f"| 1: HPT@50 − Base | {np.mean(d):+.1f} [{low:+.1f}, {high:+.1f}] |" in table
