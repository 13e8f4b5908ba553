"""Evidence: seed intervals, the paired bootstrap on known inputs, the verdict rules on
synthetic records, and per-image predictions that round-trip."""
from __future__ import annotations

import zlib

import numpy as np
import pytest
from scipy import stats

from hpt_hpc.eval.record import EvalRecord, Predictions, read_record_files, write_record_file
from hpt_hpc.experiments.claims import judge_claims
from hpt_hpc.experiments.evidence import (CONTRADICTED, INCONCLUSIVE, SUPPORTED, TIE, Difference,
                                          judge, paired_bootstrap, seed_interval, term)
from hpt_hpc.experiments.results import group_cells

N = 1000
TARGETS = np.arange(N) % 10


def predictions_with_accuracy(accuracy: float, seed: int, repeats: int = 1) -> np.ndarray:
    """Predicted classes that are right on a random ``accuracy`` share of the images."""
    rng = np.random.default_rng(seed)
    out = np.tile(TARGETS, (repeats, 1))
    wrong = rng.random((repeats, N)) >= accuracy
    out[wrong] = (out[wrong] + 1) % 10
    return out.astype(np.int16)


def record(method: str, steps: int, seed: int, accuracy: float, **coords) -> EvalRecord:
    # crc32, not hash(): str hashes change per process (PYTHONHASHSEED), and so did the data
    preds = predictions_with_accuracy(accuracy, seed=zlib.crc32(f"{method}|{steps}|{seed}"
                                                                 .encode()))
    return EvalRecord("linear", method, "mnist", "cached", "top1", float(
        (preds[0] == TARGETS).mean()), steps=steps, seed=seed,
        predictions=Predictions(preds, TARGETS, [f"img{i}.png" for i in range(N)]), **coords)


def test_seed_interval_is_a_student_t_interval():
    values = [0.90, 0.92, 0.94]
    interval = seed_interval(values)
    half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
    assert interval.mean == pytest.approx(0.92) and interval.n == 3
    assert (interval.low, interval.high) == pytest.approx((0.92 - half, 0.92 + half))
    assert np.isnan(seed_interval([0.9]).low) and "(n=1)" in seed_interval([0.9]).text()


def test_bootstrap_of_identical_predictions_is_exactly_zero():
    preds = [predictions_with_accuracy(0.9, s) for s in range(3)]
    seeds = [0, 1, 2]  # the same seeds: drawn together, as the images are
    diff = paired_bootstrap([term(1, preds, TARGETS, seeds), term(-1, preds, TARGETS, seeds)],
                            rounds=200)
    assert (diff.estimate, diff.low, diff.high) == (0.0, 0.0, 0.0)


def test_bootstrap_recovers_a_planted_shift():
    better = [predictions_with_accuracy(0.90, 10 + s) for s in range(3)]
    worse = [predictions_with_accuracy(0.80, 20 + s) for s in range(3)]
    diff = paired_bootstrap([term(1, better, TARGETS), term(-1, worse, TARGETS)], rounds=500)
    assert diff.low < 0.10 < diff.high and diff.low > 0
    assert diff.estimate == pytest.approx(0.10, abs=0.02)
    # multi-label scores (AUROC) go through the same machinery
    hot = np.eye(3)[np.arange(60) % 3]
    good = [hot[None] + 0.1 * np.random.default_rng(s).random((1, 60, 3)) for s in range(2)]
    noise = [np.random.default_rng(9 + s).random((1, 60, 3)) for s in range(2)]
    auc = paired_bootstrap([term(1, good, hot), term(-1, noise, hot)], rounds=100)
    assert auc.low > 0.2


@pytest.mark.parametrize("low, high, unmet, verdict", [
    (0.01, 0.05, [], SUPPORTED), (-0.01, 0.03, [], TIE), (-0.05, -0.01, [], CONTRADICTED),
    (0.01, 0.05, ["Target below random init"], INCONCLUSIVE)])
def test_verdict_rule(low, high, unmet, verdict):
    judgement = judge("x", Difference((low + high) / 2, low, high), unmet)
    assert judgement.verdict == verdict
    assert judgement.reasons == (unmet if verdict == INCONCLUSIVE else [])


def test_claims_on_synthetic_records_reach_each_verdict():
    rows = []
    for seed in range(3):
        rows += [record("random-init", 0, seed, 0.70), record("Base", 0, seed, 0.85),
                 record("HPT", 50, seed, 0.86), record("HPT", 500, seed, 0.95),
                 record("Target", 50, seed, 0.60), record("Target", 500, seed, 0.99),
                 record("Target", 2000, seed, 0.90)]
    claims = {c.number: c for c in judge_claims(group_cells(rows), "mnist", [50, 500, 2000])}
    verdicts = {j.comparison: j for j in claims["1"].judgements}
    assert verdicts["HPT@500 − Base"].verdict == SUPPORTED
    assert verdicts["HPT@50 − Base"].verdict == TIE
    assert verdicts["HPT@500 − Target@500"].verdict == CONTRADICTED
    inconclusive = verdicts["HPT@50 − Target@50"]
    assert inconclusive.verdict == INCONCLUSIVE and "below the random-init" in \
        inconclusive.reasons[0]
    assert claims["1"].verdict[0] == "mixed"
    # claim 2 needs one HPT budget >= 4x below Target's largest to be supported
    assert claims["2"].verdict[0] == SUPPORTED
    assert [j.comparison for j in claims["2"].judgements] == ["HPT@50 − Target@2000",
                                                              "HPT@500 − Target@2000"]


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
