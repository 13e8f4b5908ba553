"""The mnist-hpt verdicts recomputed from the committed CSV alone, with the report's rule.

The per-image predictions of that run are not committed, so the test-image part of each
interval (:func:`hpt_hpc.experiments.evidence.paired_t`) cannot be recomputed. Each
difference is given twice: with the seed part alone (narrowest possible) and with an
upper bound of the image part, ``(err_A + err_B) / N`` (a per-image difference of two
top-1 cells is non-zero only where one errs; N = 1,000 test images). A verdict both give
is the report's verdict; where they differ, the CSV cannot decide it.
Usage: ``PYTHONPATH=. python docs/results/2026-12-01/verdicts_from_csv.py``
"""
from __future__ import annotations

import csv
from pathlib import Path

from hpt_hpc.experiments.evidence import MIN_SEEDS, combine, judge

CSV = Path(__file__).with_name("mnist-hpt.csv")
IMAGES = 1000


def cells():
    out = {}
    with open(CSV, newline="") as handle:
        for r in csv.DictReader(handle):
            if r["protocol"] == "linear" and r["mode"] == "cached" and \
                    r["probe_labels_per_class"] == "all":
                key = (r["method"], int(r["target_steps"]), r["augment"], r["images_axis"])
                out.setdefault(key, {})[int(r["seed"])] = float(r["score_pct"]) / 100
    return out


def compare(table, name, terms, baseline=None, unconverged=""):
    """One comparison: ``terms`` [(weight, key)], the claim's preconditions."""
    seeds = sorted(set.intersection(*(set(table[k]) for _, k in terms)))
    unmet = []
    if len(seeds) < MIN_SEEDS:
        unmet.append(f"{len(seeds)} seed(s) shared by all cells, {MIN_SEEDS} needed")
    rand = sum(table[("random-init", 0, "all", "all")].values()) / 3
    if baseline and sum(table[baseline].values()) / len(table[baseline]) < rand:
        unmet.append(f"{baseline[0]}@{baseline[1]} below the random-init reference")
    if unconverged:
        unmet.append(unconverged)
    if unmet:
        return [name, "–", "–", "inconclusive: " + "; ".join(unmet)]
    d = [sum(w * table[k][s] for w, k in terms) for s in seeds]
    errors = sum(abs(w) * (1 - sum(table[k][s] for s in seeds) / len(seeds)) for w, k in terms)
    narrow, wide = combine(d, 0.0), combine(d, errors / IMAGES)
    verdicts = {judge(name, narrow).verdict, judge(name, wide).verdict}
    verdict = verdicts.pop() if len(verdicts) == 1 else " or ".join(
        [judge(name, narrow).verdict, judge(name, wide).verdict]) + " (undecided)"
    return [name, narrow.text(), wide.text(), f"{verdict} (1 base × {len(seeds)} target)"]


def main() -> None:
    t = cells()
    top = ("Target", 2000, "all", "all")
    gain = [t[top][s] - t[("Target", 500, "all", "all")][s] for s in range(3)]
    errors = sum(1 - sum(t[key].values()) / 3 for key in (top, ("Target", 500, "all", "all")))
    climb = combine(gain, errors / IMAGES)  # the wide one: not converged under both
    unconverged = (f"Target not converged at 2000 steps ({climb.text()} over 500 steps)"
                   if climb.low > 0 else "")
    k = lambda m, s=0, a="all", n="all": (m, s, a, n)  # noqa: E731
    rows = [
        compare(t, "1: HPT@50 − Base", [(1, k("HPT", 50)), (-1, k("Base"))]),
        compare(t, "1: HPT@500 − Base", [(1, k("HPT", 500)), (-1, k("Base"))]),
        compare(t, "1: HPT@500 − Target@500", [(1, k("HPT", 500)), (-1, k("Target", 500))],
                k("Target", 500)),
        compare(t, "1: HPT@2000 − Base", [(1, k("HPT", 2000)), (-1, k("Base"))]),
        compare(t, "1: HPT@2000 − Target@2000", [(1, k("HPT", 2000)), (-1, top)], top),
        compare(t, "2: HPT@50 − Target@2000", [(1, k("HPT", 50)), (-1, top)], top,
                unconverged),
        compare(t, "2: HPT@500 − Target@2000", [(1, k("HPT", 500)), (-1, top)], top,
                unconverged),
        compare(t, "3: B+S+T@500 − B+S", [(1, k("B+S+T", 500)), (-1, k("B+S"))]),
        compare(t, "3: B+S+T@500 − B+T", [(1, k("B+S+T", 500)), (-1, k("HPT", 500))]),
        compare(t, "3: B+S+T@500 − Base", [(1, k("B+S+T", 500)), (-1, k("Base"))]),
        compare(t, "4: Target drop − HPT drop (crop, 2000 steps)",
                [(1, top), (-1, k("Target", 2000, "crop")), (-1, k("HPT", 2000)),
                 (1, k("HPT", 2000, "crop"))], top, unconverged),
    ]
    for n in ("300", "1000"):
        rows.append(compare(t, f"5: HPT − Target ({n} images)",
                            [(1, k("HPT", 500, n=n)), (-1, k("Target", 500, n=n))],
                            k("Target", 500, n=n)))
        rows.append(compare(t, f"5: HPT-BN − HPT ({n} images)",
                            [(1, k("HPT-BN", 500, n=n)), (-1, k("HPT", 500, n=n))]))
    rows.append(compare(t, "C: HPT@500 − Base+N@500", [(1, k("HPT", 500)),
                                                         (-1, k("Base+N", 500))]))
    print("| comparison (claimed > 0) | seed part only | + image bound | verdict (seeds: "
          "base × target) |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
