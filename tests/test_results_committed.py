"""The committed reproduction reports (docs/results/mnist-hpt*.md) against their own CSVs,
recomputed here without the report code: every claim comparison's estimate is the mean of
its per-seed differences, its interval contains the seed-only paired t over the base
seeds' means (the report adds the test-image variance, so it can only be wider), and the
cells of the sequential-transfer table are the t over the base means of the CSV's rows;
the gains between a method's budgets likewise, and each gain's word follows its printed
interval."""
import csv
import re
from pathlib import Path
from statistics import fmean, stdev

import pytest
from scipy import stats

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
# report -> how many generic comparison rows it has at least (claims 4 and 5: their own tests)
REPORTS = {"mnist-hpt": 3, "mnist-hpt-transfer": 3, "mnist-hpt-augment": 1,
           "mnist-hpt-data": 1}
NO_BASE = {"Target"}  # trained from scratch: its seeds pair with every base seed
ROUNDING = 0.11  # the CSV keeps 0.1-point scores; the report prints 0.1-point figures
COMPARISON = re.compile(r"^\| [0-9C] \| (\S+) − (\S+) \| ([+-]\d+\.\d) \[([+-]\d+\.\d), "
                        r"([+-]\d+\.\d)\] \| (\d) base × (\d) target seeds \|", re.M)


def scores(name: str, augment: str = "all", images: str = "all") -> dict:
    """(method, steps) -> {(base seed, target seed): score} of the cached linear probes
    with all labels, the ``augment`` preset and ``images`` target images."""
    out = {}
    with open(RESULTS / f"{name}.csv", newline="") as handle:
        for r in csv.DictReader(handle):
            if (r["protocol"], r["mode"], r["probe_labels_per_class"], r["augment"],
                    r["images_axis"]) == ("linear", "cached", "all", augment, images):
                cell = out.setdefault((r["method"], int(r["target_steps"])), {})
                cell[(int(r["base_seed"]), int(r["seed"]))] = float(r["score_pct"])
    return out


def cell(table: dict, text: str, steps_of_left: str = "0") -> dict:
    """The cell a comparison names: ``method@steps``; the transfer names B+T is HPT at
    the left cell's steps (the paper's sequential-transfer naming)."""
    method, _, steps = text.partition("@")
    if method == "B+T":
        return table[("HPT", int(steps or steps_of_left))]
    return table[(method, int(steps or 0))]


def seed_only(left: dict, right: dict, right_has_base: bool):
    """Estimate and seed-only 95 % t interval over base means (one base: over target
    seeds) of left − right, paired by (base, target) seed; a right cell without a base
    pairs by target seed."""
    bases = sorted({b for b, _ in left})
    diffs = {(b, s): v - right[(b, s) if right_has_base else (0, s)]
             for (b, s), v in left.items()}
    per_base = [fmean(d for (b, _), d in diffs.items() if b == base) for base in bases] \
        if len(bases) > 1 else list(diffs.values())  # one base: the t over target seeds
    return t_interval(per_base)


def t_interval(values: list):
    """Mean and 95 % Student-t interval of ``values``."""
    half = stats.t.ppf(0.975, len(values) - 1) * stdev(values) / len(values) ** 0.5
    estimate = fmean(values)
    return estimate, estimate - half, estimate + half


@pytest.mark.parametrize("name", REPORTS)
def test_committed_comparisons_are_their_csv_recomputed(name):
    report, table = (RESULTS / f"{name}.md").read_text(), scores(name)
    rows = COMPARISON.findall(report)
    assert len(rows) >= REPORTS[name], "the report's comparison rows were not found"
    for left, right, est, low, high, bases, targets in rows:
        a, b = cell(table, left), cell(table, right, left.partition("@")[2] or "0")
        assert len({k[0] for k in a}) == int(bases) and len({k[1] for k in a}) == int(targets)
        estimate, s_low, s_high = seed_only(
            a, b, right.partition("@")[0] not in NO_BASE)
        assert abs(estimate - float(est)) <= ROUNDING, (left, right, estimate, est)
        assert float(low) <= s_low + ROUNDING and float(high) >= s_high - ROUNDING, \
            (left, right, (low, high), (s_low, s_high))


def test_committed_transfer_cells_are_the_t_over_base_means():
    report, table = (RESULTS / "mnist-hpt-transfer.md").read_text(), scores("mnist-hpt-transfer")
    found = 0
    for method, steps in [("Base", 0), ("B+S", 0), ("HPT", 500), ("B+S+T", 500)]:
        values = table[(method, steps)]
        means = [fmean(v for (b, _), v in values.items() if b == base)
                 for base in sorted({b for b, _ in values})]
        half = stats.t.ppf(0.975, len(means) - 1) * stdev(means) / len(means) ** 0.5
        m = fmean(means)
        shown = re.search(rf"^\| \S+ \| {re.escape(method)} \| (\d+\.\d) \[(\d+\.\d), "
                          rf"(\d+\.\d)\] \(n=3 base × 3 target\) \|$", report, re.M)
        assert shown, method
        for figure, value in zip(shown.groups(), (m, m - half, m + half)):
            assert abs(float(figure) - value) <= ROUNDING, (method, figure, value)
        found += 1
    assert found == 4


GAIN = re.compile(r"^\| (\S+) \| ([\d,]+) → ([\d,]+) \| ([+-]\d+\.\d) \[([+-]\d+\.\d), "
                  r"([+-]\d+\.\d)\] \| (\d) base × (\d) target seeds \| (\w+) \|$", re.M)


def _words(low: str, high: str) -> set:
    """The gain verdicts its printed interval allows (margin 1 point). A bound printed
    +0.0 / -0.0 is above / below 0 by less than 0.05 (the report says so); a bound printed
    at the margin (±1.0) may lie either side of it."""
    lo, hi = float(low), float(high)
    if lo > 0 or low == "+0.0":
        return {"gaining"}
    if hi < 0 or high == "-0.0":
        return {"losing"}
    inside, edge = -1 < lo and hi < 1, -1 <= lo and hi <= 1
    return {"level"} if inside else {"level", "unresolved"} if edge else {"unresolved"}


@pytest.mark.parametrize("name", [n for n in REPORTS if n != "mnist-hpt-data"]  # 1 budget
                         + ["mnist-hpt-plateau"])  # Target alone: no claim rows
def test_committed_gains_between_budgets_are_their_csv_recomputed(name):
    report, table = (RESULTS / f"{name}.md").read_text(), scores(name)
    rows = GAIN.findall(report)
    assert rows, "the report's gain-with-more-steps rows were not found"
    for method, low_steps, high_steps, est, low, high, bases, targets, word in rows:
        a = table[(method, int(high_steps.replace(",", "")))]
        b = table[(method, int(low_steps.replace(",", "")))]
        assert len({k[0] for k in a}) == int(bases) and len({k[1] for k in a}) == int(targets)
        estimate, s_low, s_high = seed_only(a, b, method not in NO_BASE)
        assert abs(estimate - float(est)) <= ROUNDING, (method, low_steps, estimate, est)
        assert float(low) <= s_low + ROUNDING and float(high) >= s_high - ROUNDING
        assert word in _words(low, high), (method, low_steps, low, high, word)


DROP = re.compile(r"^\| 4 \| Target drop − HPT drop \((\S+), (\d+) steps\) \| ([+-]\d+\.\d) "
                  r"\[([+-]\d+\.\d), ([+-]\d+\.\d)\] \| 1 base × (\d) target seeds \|", re.M)


def test_committed_augmentation_drops_are_their_csv_recomputed():
    """Claim 4: (Target all − Target preset) − (HPT all − HPT preset), per target seed."""
    report = (RESULTS / "mnist-hpt-augment.md").read_text()
    rows = DROP.findall(report)
    assert len(rows) == 2, "the report's claim-4 rows were not found"
    full = scores("mnist-hpt-augment")
    for preset, steps, est, low, high, targets in rows:
        dropped = scores("mnist-hpt-augment", preset)
        t_all, t_p, h_all, h_p = (table[(m, int(steps))] for table, m in
                                  ((full, "Target"), (dropped, "Target"), (full, "HPT"),
                                   (dropped, "HPT")))
        per_seed = [t_all[(0, s)] - t_p[(0, s)] - h_all[(0, s)] + h_p[(0, s)]
                    for s in sorted(s for _, s in h_all)]
        assert len(per_seed) == int(targets) == 3
        estimate, s_low, s_high = t_interval(per_seed)
        assert abs(estimate - float(est)) <= 2 * ROUNDING, (preset, per_seed, est)
        assert float(low) <= s_low + 2 * ROUNDING
        assert float(high) >= s_high - 2 * ROUNDING


AMOUNT = re.compile(r"^\| 5 \| (\S+) − (\S+) \((\d+) images\) \| ([+-]\d+\.\d) "
                    r"\[([+-]\d+\.\d), ([+-]\d+\.\d)\] \| (\d) base × (\d) target seeds \|",
                    re.M)


def test_committed_data_amount_comparisons_are_their_csv_recomputed():
    """Claim 5: HPT − Target and HPT-BN − HPT at each cut of the target data."""
    report = (RESULTS / "mnist-hpt-data.md").read_text()
    rows = AMOUNT.findall(report)
    assert len(rows) >= 3, "the report's claim-5 rows were not found"
    for left, right, images, est, low, high, bases, targets in rows:
        table = scores("mnist-hpt-data", images=images)
        a, b = table[(left, 500)], table[(right, 500)]
        assert len({k[0] for k in a}) == int(bases) and len({k[1] for k in a}) == int(targets)
        estimate, s_low, s_high = seed_only(a, b, right not in NO_BASE)
        assert abs(estimate - float(est)) <= ROUNDING, (left, right, images, estimate, est)
        assert float(low) <= s_low + ROUNDING and float(high) >= s_high - ROUNDING
