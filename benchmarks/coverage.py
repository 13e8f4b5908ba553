"""Coverage of the report's difference intervals, measured on cells with a known difference.

Each simulated comparison has two cells (A, B) scored on a fresh test set of ``--images``
images drawn from a population, at ``seeds`` pretraining seeds. Image ``i`` of seed ``s``
of cell ``k`` is right with probability ``clip(m_k + z_i + u_ki + a_ks, 0, 1)``: ``z_i``
the image's difficulty (shared by both cells, SD 0.25), ``u_ki`` the cell's own image
effect (SD 0.15: the methods get different images right), ``a_ks`` the seed's effect,
scaled by the clip's slope so that the seed's population accuracy has the setting's seed
SD (the observed SD over seeds adds the test set's binomial noise, about 1.1 points; both
are reported). The true difference is the population one,
``E clip(A) - E clip(B)``, exact for normal terms (``E clip(Y, 0, 1) = g(m) - g(m - 1)``,
``g(m) = m Phi(m/sd) + sd phi(m/sd)``). Per setting (seed SD 0.5-4 points x 3 or 5 seeds
x true difference 0 or +3 points): the share of intervals holding the truth (coverage, goal
>= 93 % of 95 %) and, at difference 0, the share calling it "supported" (interval above 0,
goal <= 3 %; nominal 2.5 %). Methods: the report's :func:`paired_t` (seed + image
variance), the t over seeds alone (``image variance 0``), and the percentile bootstrap
over seeds and images the report used before (fewer reps: it is slow).

``--two-level``: an HPT-like cell over 3 base x 3 target seeds (base SD 0.5-4 points,
target seed SD 2) against a Target-like cell with no base, paired as the report pairs
them; the interval is then a t over the base seeds' means.

Results: ``benchmarks/results/coverage.json`` and ``coverage.md``; ``--two-level``:
``coverage-two-level.{json,md}``.
Usage: ``PYTHONPATH=. python benchmarks/coverage.py [--reps 4000] [--two-level]``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Dict

import numpy as np
from scipy.stats import norm

from hpt_hpc.experiments.evidence import Term, combine, paired_t

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
ACCURACY, IMAGE_SD, CELL_IMAGE_SD = 0.85, 0.25, 0.15
SEED_SDS = (0.005, 0.01, 0.02, 0.03, 0.04)
SEEDS = (3, 5)
DIFFERENCES = (0.0, 0.03)


def expected_clipped(mean: float, sd: float) -> float:
    """``E clip(Y, 0, 1)`` for ``Y ~ N(mean, sd^2)``."""
    def g(m: float) -> float:  # E max(Y, 0)
        return m * norm.cdf(m / sd) + sd * norm.pdf(m / sd)
    return float(g(mean) - g(mean - 1))


def true_difference(difference: float, seed_sd: float) -> float:
    sd = float(np.sqrt(IMAGE_SD ** 2 + CELL_IMAGE_SD ** 2 + (seed_sd / _slope()) ** 2))
    return expected_clipped(ACCURACY + difference, sd) - expected_clipped(ACCURACY, sd)


def _slope() -> float:
    """d E clip(Y) / d mean: the share of images whose probability is not clipped."""
    sd = float(np.sqrt(IMAGE_SD ** 2 + CELL_IMAGE_SD ** 2))
    return float(norm.cdf((1 - ACCURACY) / sd) - norm.cdf(-ACCURACY / sd))


def draw(rng: np.random.Generator, difference: float, seed_sd: float, seeds: int,
         images: int):
    """Per-image correctness (seeds, images) of cells A and B."""
    z = rng.normal(0, IMAGE_SD, images)
    seed_sd = seed_sd / _slope()
    cells = []
    for m in (ACCURACY + difference, ACCURACY):
        p = m + z + rng.normal(0, CELL_IMAGE_SD, images) + rng.normal(0, seed_sd, (seeds, 1))
        cells.append((rng.random((seeds, images)) < np.clip(p, 0, 1)).astype(np.float64))
    return cells


def percentile_bootstrap(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
                         rounds: int):
    """The report's former interval: seeds and images drawn with replacement (paired)."""
    d = a - b
    seeds, images = d.shape
    draws = np.empty(rounds)
    for r in range(rounds):
        s = rng.integers(0, seeds, seeds)
        draws[r] = d[np.ix_(s, rng.integers(0, images, images))].mean()
    return np.quantile(draws, [0.025, 0.975])


def simulate(seed_sd: float, seeds: int, difference: float, reps: int, images: int = 1000,
             rng_seed: int = 0, bootstrap_reps: int = 0, rounds: int = 400) -> Dict:
    """Coverage and "supported" rate of each method in one setting."""
    rng = np.random.default_rng(rng_seed)
    truth = true_difference(difference, seed_sd)
    hits = {"paired_t": [], "seed_t": [], "bootstrap": []}
    above = {"paired_t": [], "seed_t": [], "bootstrap": []}
    spread = []
    for rep in range(reps):
        a, b = draw(rng, difference, seed_sd, seeds, images)
        spread.append(a.mean(1).std(ddof=1))
        full = paired_t([Term(1, a), Term(-1, b)])
        seed_only = combine(a.mean(1) - b.mean(1), 0.0)
        intervals = {"paired_t": (full.low, full.high),
                     "seed_t": (seed_only.low, seed_only.high)}
        if rep < bootstrap_reps:
            intervals["bootstrap"] = tuple(percentile_bootstrap(a, b, rng, rounds))
        for name, (low, high) in intervals.items():
            hits[name].append(low <= truth <= high)
            above[name].append(low > 0)
    out = {"seed_sd_points": 100 * seed_sd, "seeds": seeds, "images": images,
           "true_difference_points": round(100 * truth, 4), "reps": reps,
           "observed_seed_sd_points": round(100 * float(np.mean(spread)), 2)}
    for name in hits:
        if hits[name]:
            out[name] = {"reps": len(hits[name]), "coverage": float(np.mean(hits[name])),
                         "supported": float(np.mean(above[name]))}
    return out


def simulate_two_level(base_sd: float, seed_sd: float, difference: float, reps: int,
                       bases: int = 3, seeds: int = 3, images: int = 1000,
                       rng_seed: int = 0) -> Dict:
    """HPT-like cell A (base effect of SD ``base_sd`` per base seed, plus its target
    seeds' effects) against a Target-like cell B that starts from no base (its target
    seeds' effects only), paired as the report pairs them: (base, target) rows of A with
    B's row of the same target seed. Coverage of :func:`paired_t` over both levels."""
    rng = np.random.default_rng(rng_seed)
    slope = _slope()
    sd = float(np.sqrt(IMAGE_SD ** 2 + CELL_IMAGE_SD ** 2 + ((base_sd ** 2 + seed_sd ** 2)
                                                              / slope ** 2)))
    sd_b = float(np.sqrt(IMAGE_SD ** 2 + CELL_IMAGE_SD ** 2 + (seed_sd / slope) ** 2))
    truth = expected_clipped(ACCURACY + difference, sd) - expected_clipped(ACCURACY, sd_b)
    ids = [(b, t) for b in range(bases) for t in range(seeds)]
    hits, above = [], []
    for _ in range(reps):
        z = rng.normal(0, IMAGE_SD, images)
        pa = (ACCURACY + difference + z + rng.normal(0, CELL_IMAGE_SD, images)
              + np.repeat(rng.normal(0, base_sd / slope, bases), seeds)[:, None]
              + rng.normal(0, seed_sd / slope, (bases * seeds, 1)))
        pb = ACCURACY + z + rng.normal(0, CELL_IMAGE_SD, images) + \
            rng.normal(0, seed_sd / slope, (seeds, 1))
        a = (rng.random(pa.shape) < np.clip(pa, 0, 1)).astype(np.float64)
        b = (rng.random(pb.shape) < np.clip(pb, 0, 1)).astype(np.float64)
        diff = paired_t([Term(1, a, seed_ids=tuple(ids)),
                         Term(-1, b[[t for _, t in ids]], seed_ids=tuple(ids))])
        hits.append(diff.low <= truth <= diff.high)
        above.append(diff.low > 0)
    return {"base_sd_points": 100 * base_sd, "seed_sd_points": 100 * seed_sd,
            "bases": bases, "seeds": seeds, "true_difference_points": round(100 * truth, 4),
            "reps": reps, "coverage": float(np.mean(hits)), "supported": float(np.mean(above))}


def _markdown(rows, machine: str, seconds: float) -> str:
    lines = [f"# Coverage of the 95 % difference intervals ({machine}, {seconds:.0f} s)", "",
             "| seed SD (pts) | seeds | true diff (pts) | paired t: coverage | paired t: "
             "supported | t over seeds: coverage | supported | old bootstrap: coverage | "
             "supported |", "|" + "---|" * 9]
    for r in rows:
        def cells(name):
            m = r.get(name)
            return ["–", "–"] if m is None else [f"{100 * m['coverage']:.1f} %",
                                                  f"{100 * m['supported']:.1f} %"]
        lines.append("| " + " | ".join([f"{r['seed_sd_points']:.1f}", str(r["seeds"]),
                                        f"{r['true_difference_points']:+.2f}"]
                                       + cells("paired_t") + cells("seed_t")
                                       + cells("bootstrap")) + " |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "cpu"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=4000)
    parser.add_argument("--bootstrap-reps", type=int, default=400)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--two-level", action="store_true",
                        help="3 base x 3 target seeds (coverage-two-level.{json,md})")
    args = parser.parse_args()
    start = time.perf_counter()
    if args.two_level:
        return _two_level(args, start)
    rows = []
    for k, (sd, seeds, diff) in enumerate((sd, n, d) for n in SEEDS for sd in SEED_SDS
                                          for d in DIFFERENCES):
        rows.append(simulate(sd, seeds, diff, args.reps, args.images, rng_seed=k,
                             bootstrap_reps=args.bootstrap_reps))
        print(json.dumps(rows[-1]), flush=True)
    seconds = time.perf_counter() - start
    machine = f"{platform.machine()} {_cpu()}, {os.cpu_count()} CPU cores, no GPU used"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "coverage.json").write_text(json.dumps(
        {"machine": machine, "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1),
         "args": vars(args),
         "rows": rows}, indent=1))
    (RESULTS / "coverage.md").write_text(_markdown(rows, machine, seconds))
    print(_markdown(rows, machine, seconds))


def _two_level(args, start: float) -> None:
    rows = [simulate_two_level(base, 0.02, diff, args.reps, images=args.images, rng_seed=k)
            for k, (base, diff) in enumerate((b, d) for b in (0.005, 0.01, 0.02, 0.04)
                                             for d in DIFFERENCES)]
    seconds = time.perf_counter() - start
    machine = f"{platform.machine()} {_cpu()}, {os.cpu_count()} CPU cores, no GPU used"
    (RESULTS / "coverage-two-level.json").write_text(json.dumps(
        {"machine": machine, "date": time.strftime("%Y-%m-%d"), "seconds": round(seconds, 1),
         "args": vars(args), "rows": rows}, indent=1))
    lines = [f"# Coverage over 3 base x 3 target seeds ({machine}, {seconds:.0f} s)", "",
             "| base SD (pts) | target seed SD (pts) | true diff (pts) | coverage | "
             "supported |", "|---|---|---|---|---|"]
    lines += [f"| {r['base_sd_points']:.1f} | {r['seed_sd_points']:.1f} | "
              f"{r['true_difference_points']:+.2f} | {100 * r['coverage']:.1f} % | "
              f"{100 * r['supported']:.1f} % |" for r in rows]
    (RESULTS / "coverage-two-level.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
