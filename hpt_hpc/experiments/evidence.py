"""Statistics a comparison rests on: intervals over pretraining seeds, a paired t-interval
of a difference over seeds and test images, verdicts from one stated rule, and Holm's
correction for a claim that any of several comparisons suffices.

* **Cell interval**: mean of the seeds' scores and a 95 % Student-t interval over the
  seeds (``n`` seeds, ``n - 1`` degrees of freedom); one seed has no interval.
* **Difference** ``sum_k w_k * score(cell_k)`` on the seeds all cells share
  (:func:`paired_t`): per shared seed ``s`` the difference ``d_s`` over all test images;
  the estimate is their mean. With several base seeds (seed ids ``(base, target)``) the
  seed part is over the base seeds' means (two levels: ``S`` = the number of bases). Its variance is the two-way (seed x image) random-effects
  variance of a mean: the seed part ``var(d_s) / S`` (what new pretraining seeds change)
  plus the test-image part ``var(D_i) / N - MS_err / (S N)`` (``D_i`` the per-image
  difference averaged over seeds: what a new test set changes, which every seed shares
  and a t over seeds alone misses; ``MS_err`` the seed x image residual, already in the
  seed part). AUROC is no mean over images: its image part is a bootstrap over images.
  The 95 % interval is a Student-t one with the seeds' ``S - 1`` degrees of freedom.
  Its coverage is measured, not assumed: ``benchmarks/coverage.py``, docs/evaluation.md.
* **Verdict** of a claimed difference (claimed to be positive), with the claim's
  equivalence ``margin``: *supported* when the interval lies above 0, *contradicted*
  when it lies below 0, *equivalent* when it lies inside ``[-margin, +margin]``,
  *unresolved* when it contains 0 and reaches beyond the margin, *inconclusive* when a
  precondition fails (named).
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..eval.metrics import binary_auroc

LEVEL = 0.95
MARGIN = 0.01  # equivalence margin of a claim unless it states its own: 1 point
MIN_SEEDS = 3  # a comparison needs this many seeds shared by all its cells
IMAGE_ROUNDS = 200  # bootstrap rounds of the test-image variance of an AUROC difference
SUPPORTED, EQUIVALENT, UNRESOLVED, CONTRADICTED, INCONCLUSIVE = (
    "supported", "equivalent", "unresolved", "contradicted", "inconclusive")
VERDICTS = (SUPPORTED, EQUIVALENT, UNRESOLVED, CONTRADICTED, INCONCLUSIVE)
INTERVAL_METHOD = "95 % Student-t interval over pretraining seeds"
DIFFERENCE_METHOD = ("paired t: per-seed differences on the seeds all cells share, seed "
                     "variance + test-image variance, seeds - 1 df, 95 %")


def _t_quantile(df: float, level: float = LEVEL) -> float:
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
    seed_ids: Tuple = ()  # the seeds of ``values``' rows

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float64)
        self.multi_label = self.values.ndim == 3

    @property
    def seeds(self) -> int:
        return self.values.shape[0]

    @property
    def images(self) -> int:
        return self.values.shape[1]

    def seed_score(self, seed: int, images: np.ndarray) -> float:
        """The score of one seed's row on ``images``."""
        if not self.multi_label:
            return float(self.values[seed, images].mean())
        scores, targets = self.values[seed][images], self.targets[images]
        aucs = [binary_auroc(scores[:, c], targets[:, c]) for c in range(targets.shape[1])]
        aucs = [a for a in aucs if not math.isnan(a)]
        return float(np.mean(aucs)) if aucs else math.nan


def term(weight: float, predictions: Sequence[np.ndarray], targets: np.ndarray,
         seed_ids: Sequence = ()) -> Term:
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
    """An estimated difference, its standard error and degrees of freedom: the interval
    ``estimate ± t(df) * se``."""

    estimate: float
    se: float
    df: float
    seeds: int
    level: float = LEVEL

    @property
    def half(self) -> float:
        return _t_quantile(self.df, self.level) * self.se if self.se > 0 else 0.0

    @property
    def low(self) -> float:
        return self.estimate - self.half

    @property
    def high(self) -> float:
        return self.estimate + self.half

    def p_above_zero(self) -> float:
        """One-sided p-value of "the difference is positive" (0 or 1 without spread)."""
        from scipy.stats import t
        if self.se <= 0:
            return 0.0 if self.estimate > 0 else 1.0
        return float(t.sf(self.estimate / self.se, self.df))

    def text(self, scale: float = 100.0) -> str:
        return f"{scale * self.estimate:+.1f} [{scale * self.low:+.1f}, {scale * self.high:+.1f}]"


def combine(seed_differences: Sequence[float], image_variance: float,
            level: float = LEVEL) -> Difference:
    """The :class:`Difference` of per-seed differences and the test-image variance of
    their mean, with the seeds' ``S - 1`` degrees of freedom (conservative: the image
    part is known to N - 1; Welch-Satterthwaite's larger df under-covers at 3 seeds,
    measured in ``benchmarks/coverage.py``)."""
    d = np.asarray(seed_differences, dtype=np.float64)
    if len(d) < 2:
        raise ValueError("a difference needs at least 2 seeds for its interval")
    v_seed = float(d.var(ddof=1)) / len(d)
    total = v_seed + max(float(image_variance), 0.0)
    return Difference(float(d.mean()), math.sqrt(total), len(d) - 1.0, len(d), level)


def paired_t(terms: Sequence[Term], level: float = LEVEL) -> Difference:
    """The difference ``sum(w * score)`` over ``terms`` (all scored on the same test
    images in the same order, row ``s`` of every term the same seed) and its interval."""
    sizes = {t.images for t in terms}
    if len(sizes) != 1:
        raise ValueError(f"the cells were scored on different test sets (sizes {sizes})")
    seeds = {t.seeds for t in terms}
    if len(seeds) != 1:
        raise ValueError(f"the cells have different numbers of seeds ({sorted(seeds)})")
    n, s = sizes.pop(), seeds.pop()
    everything = np.arange(n)
    per_seed = [sum(t.weight * t.seed_score(k, everything) for t in terms) for k in range(s)]
    bases = [i[0] if isinstance(i, tuple) else None for i in terms[0].seed_ids]
    if len({b for b in bases if b is not None}) > 1:  # two levels: t over base-seed means
        per_seed = [float(np.mean([d for d, b in zip(per_seed, bases) if b == base]))
                    for base in sorted(set(bases))]
    if not any(t.multi_label for t in terms):  # two-way seed x image decomposition
        d = sum(t.weight * t.values for t in terms)
        residual = d - d.mean(1, keepdims=True) - d.mean(0, keepdims=True) + d.mean()
        noise = float((residual ** 2).sum()) / ((s - 1) * (n - 1)) if s > 1 else 0.0
        image_variance = float(d.mean(0).var(ddof=1)) / n - noise / (s * n)
    else:  # bootstrap the images of the seed-mean difference (holds seed x image noise too)
        rng = np.random.default_rng(0)
        draws = []
        for _ in range(IMAGE_ROUNDS):
            images = rng.integers(0, n, size=n)
            draws.append(np.mean([sum(t.weight * t.seed_score(k, images) for t in terms)
                                  for k in range(s)]))
        image_variance = float(np.var(draws, ddof=1))
    return combine(per_seed, image_variance, level)


def holm(pvalues: Sequence[float], alpha: float) -> List[bool]:
    """Holm's step-down: which hypotheses are rejected at familywise level ``alpha``."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


@dataclass
class Judgement:
    """The verdict on one claimed (positive) difference, with why."""

    comparison: str
    verdict: str
    difference: Optional[Difference] = None
    reasons: List[str] = field(default_factory=list)
    seeds: str = ""  # which levels the difference's spread covers
    schedule: List[str] = field(default_factory=list)  # cells probed along longer runs


def judge(comparison: str, difference: Optional[Difference], unmet: Sequence[str] = (),
          margin: float = MARGIN, seeds: str = "") -> Judgement:
    """The stated rule (module docstring): preconditions first, then the interval."""
    if unmet or difference is None:
        return Judgement(comparison, INCONCLUSIVE, difference,
                         list(unmet) or ["a cell it needs is missing"], seeds)
    if difference.low > 0:
        verdict = SUPPORTED
    elif difference.high < 0:
        verdict = CONTRADICTED
    elif -margin <= difference.low and difference.high <= margin:
        verdict = EQUIVALENT
    else:
        verdict = UNRESOLVED
    return Judgement(comparison, verdict, difference, [], seeds)


def overall(judgements: Sequence[Judgement]) -> Tuple[str, str]:
    """A claim's verdict from its comparisons' verdicts: all the same -> that verdict;
    otherwise ``mixed`` with the counts."""
    verdicts = [j.verdict for j in judgements]
    if not verdicts:
        return INCONCLUSIVE, "no comparison could be made"
    if len(set(verdicts)) == 1:
        return verdicts[0], f"all {len(verdicts)} comparison(s) {verdicts[0]}"
    counts = ", ".join(f"{verdicts.count(v)} {v}" for v in VERDICTS if v in verdicts)
    return "mixed", counts
