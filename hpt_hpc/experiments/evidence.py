"""Statistics a comparison rests on: intervals over pretraining seeds, a paired bootstrap
over test images and seeds, and verdicts from one stated rule.

* **Cell interval**: mean of the seeds' scores and a 95 % Student-t interval over the
  seeds (``n`` seeds, ``n - 1`` degrees of freedom); one seed has no interval.
* **Paired bootstrap** of a difference ``sum_k w_k * score(cell_k)``: each of ``B``
  rounds draws the test images with replacement (the same draw for every cell: the
  comparison is paired over images) and the pretraining seeds with replacement (the same
  draw for every cell when all cells have the same seeds, which share data order and
  augmentation draws; else per cell); a cell's score is the mean over the drawn seeds of
  the metric on the drawn images. The interval is the 2.5th-97.5th percentile of the
  ``B`` differences.
* **Verdict** of a claimed difference (claimed to be positive): *supported* when its
  interval lies above 0, *tie* when it contains 0, *contradicted* when it lies below 0,
  *inconclusive* when a precondition fails (named), e.g. a baseline below the random-init
  reference.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..eval.metrics import binary_auroc

LEVEL = 0.95
BOOTSTRAP_ROUNDS = 2000
SUPPORTED, TIE, CONTRADICTED, INCONCLUSIVE = ("supported", "tie", "contradicted",
                                              "inconclusive")
INTERVAL_METHOD = "95 % Student-t interval over pretraining seeds"
BOOTSTRAP_METHOD = (f"paired bootstrap over test images and pretraining seeds "
                    f"({BOOTSTRAP_ROUNDS} rounds, percentile 95 % interval)")


def _t_quantile(df: int, level: float = LEVEL) -> float:
    from scipy.stats import t
    return float(t.ppf(0.5 + level / 2, df))


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int

    def text(self, scale: float = 100.0, digits: int = 1) -> str:
        if self.n < 2 or math.isnan(self.low):
            return f"{scale * self.mean:.{digits}f} (n={self.n})"
        return (f"{scale * self.mean:.{digits}f} [{scale * self.low:.{digits}f}, "
                f"{scale * self.high:.{digits}f}] (n={self.n})")


def seed_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and Student-t interval of per-seed scores (NaN bounds for one seed)."""
    values = [float(v) for v in values]
    mean = statistics.fmean(values)
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan, len(values))
    half = _t_quantile(len(values) - 1, level) * statistics.stdev(values) / math.sqrt(len(values))
    return Interval(mean, mean - half, mean + half, len(values))


@dataclass
class Term:
    """One cell in a comparison: ``weight`` times its score. ``values`` per seed: (seeds,
    images) per-image correctness in [0, 1] (top-1; a fraction when probe repeats are
    averaged) or (seeds, images, classes) scores (AUROC, with multi-hot ``targets``)."""

    weight: float
    values: np.ndarray
    targets: Optional[np.ndarray] = None
    seed_ids: Tuple[int, ...] = ()  # the seeds of ``values``' rows (pairs cells' seeds)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.multi_label = self.values.ndim == 3

    @property
    def seeds(self) -> int:
        return self.values.shape[0]

    @property
    def images(self) -> int:
        return self.values.shape[1]

    def score(self, seeds: np.ndarray, images: np.ndarray) -> float:
        if not self.multi_label:
            return float(self.values[np.ix_(seeds, images)].mean())
        targets = self.targets[images]
        per_seed = []
        for s in seeds:
            scores = self.values[s][images]
            aucs = [binary_auroc(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]
            aucs = [a for a in aucs if not math.isnan(a)]
            per_seed.append(float(np.mean(aucs)) if aucs else math.nan)
        return float(np.mean(per_seed))


def term(weight: float, predictions: Sequence[np.ndarray], targets: np.ndarray,
         seed_ids: Sequence[int] = ()) -> Term:
    """A :class:`Term` from each seed's predictions (repeats, images[, classes]) and the
    test targets: top-1 correctness or scores, averaged over probe repeats."""
    targets = np.asarray(targets)
    if targets.ndim == 2:
        values = [np.asarray(p, dtype=np.float64).mean(0) for p in predictions]
        return Term(weight, np.stack(values), targets, tuple(seed_ids))
    values = [(np.asarray(p) == targets[None, :]).mean(0) for p in predictions]
    return Term(weight, np.stack(values), None, tuple(seed_ids))


@dataclass
class Difference:
    """A bootstrapped difference with its interval."""

    estimate: float
    low: float
    high: float
    rounds: int = BOOTSTRAP_ROUNDS

    def text(self, scale: float = 100.0) -> str:
        return f"{scale * self.estimate:+.1f} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"


def paired_bootstrap(terms: Sequence[Term], rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
                     level: float = LEVEL) -> Difference:
    """The difference ``sum(w * score)`` over ``terms`` (all scored on the same test
    images, in the same order) and its paired-bootstrap interval."""
    sizes = {t.images for t in terms}
    if len(sizes) != 1:
        raise ValueError(f"the cells were scored on different test sets (sizes {sizes})")
    n = sizes.pop()
    everything = np.arange(n)
    estimate = sum(t.weight * t.score(np.arange(t.seeds), everything) for t in terms)
    rng = np.random.default_rng(seed)
    paired = len({t.seed_ids or (None, t.seeds) for t in terms}) == 1
    draws = np.empty(rounds)
    for r in range(rounds):
        images = rng.integers(0, n, size=n)
        shared = rng.integers(0, terms[0].seeds, size=terms[0].seeds) if paired else None
        draws[r] = sum(t.weight * t.score(shared if paired else
                                          rng.integers(0, t.seeds, size=t.seeds), images)
                       for t in terms)
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return Difference(float(estimate), float(low), float(high), rounds)


@dataclass
class Judgement:
    """The verdict on one claimed (positive) difference, with why."""

    comparison: str
    verdict: str
    difference: Optional[Difference] = None
    reasons: List[str] = field(default_factory=list)


def judge(comparison: str, difference: Optional[Difference],
          unmet: Sequence[str] = ()) -> Judgement:
    """The stated rule (module docstring): preconditions first, then the interval."""
    if unmet or difference is None:
        return Judgement(comparison, INCONCLUSIVE, difference,
                         list(unmet) or ["a cell it needs is missing"])
    if difference.low > 0:
        return Judgement(comparison, SUPPORTED, difference)
    if difference.high < 0:
        return Judgement(comparison, CONTRADICTED, difference)
    return Judgement(comparison, TIE, difference)


def overall(judgements: Sequence[Judgement]) -> Tuple[str, str]:
    """A claim's verdict from its comparisons' verdicts: all the same -> that verdict;
    otherwise ``mixed`` with the counts."""
    verdicts = [j.verdict for j in judgements]
    if not verdicts:
        return INCONCLUSIVE, "no comparison could be made"
    if len(set(verdicts)) == 1:
        return verdicts[0], f"all {len(verdicts)} comparison(s) {verdicts[0]}"
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in
                       (SUPPORTED, TIE, CONTRADICTED, INCONCLUSIVE) if v in verdicts)
    return "mixed", counts
