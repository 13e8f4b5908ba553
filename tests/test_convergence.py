"""The report's gain-with-more-steps table: each successive gain judged by the claims'
rule, the plateau summary by the stated rule, checked against numpy on planted data."""
from __future__ import annotations

import numpy as np

from hpt_hpc.experiments.convergence import convergence_markdown, gains, summary
from hpt_hpc.experiments.report import build_report
from hpt_hpc.experiments.results import group_cells
from verdicts import TARGETS, predictions_with_accuracy, record


def _rows(method, plan, along=0):
    """``plan``: steps -> per-seed accuracies, or the steps whose predictions to copy."""
    rows, preds = [], {}
    for steps, spec in plan.items():
        for seed in range(3):
            if isinstance(spec, int):  # the same predictions as that budget: no gain at all
                p = preds[(spec, seed)]
            else:
                p = predictions_with_accuracy(spec[seed], seed=1000 * steps + seed)
            preds[(steps, seed)] = p
            rows.append(record(method, steps, seed, 0, preds=p, along=along if steps < max(plan) else 0))
    return rows, preds


def test_gains_are_the_mean_paired_differences_and_the_summary_follows_the_rule():
    rows, preds = _rows("Target", {1000: (0.6, 0.62, 0.58), 2000: (0.9, 0.91, 0.89),
                                   4000: 2000, 8000: 4000}, along=8000)
    cells = group_cells(rows)
    judged = gains(cells, "mnist", "Target", [1000, 2000, 4000, 8000])
    assert [(a, b) for a, b, _ in judged] == [(1000, 2000), (2000, 4000), (4000, 8000)]
    expected = np.mean([(preds[(2000, s)][0] == TARGETS).mean()
                        - (preds[(1000, s)][0] == TARGETS).mean() for s in range(3)])
    first = judged[0][2]
    assert abs(first.difference.estimate - expected) < 1e-12
    assert [j.verdict for _, _, j in judged] == ["supported", "equivalent", "equivalent"]
    assert summary("Target", judged).startswith("Target plateaus from 2,000 steps")
    md = "\n".join(convergence_markdown(cells, "mnist", ["Target"], [1000, 2000, 4000, 8000]))
    assert "| Target | 2,000 → 4,000 | +0.0 [+0.0, +0.0] | 1 base × 3 target seeds | level |" \
        in md
    assert "Target's 1,000, 2,000, 4,000-step cells are checkpoints of 8,000-step runs" in md


def test_still_gaining_no_plateau_and_inconclusive():
    rising, _ = _rows("Target", {500: (0.3, 0.32, 0.31), 1000: 500, 2000: (0.9, 0.9, 0.9)})
    judged = gains(group_cells(rising), "mnist", "Target", [500, 1000, 2000])
    assert [j.verdict for _, _, j in judged] == ["equivalent", "supported"]
    assert summary("Target", judged) == "Target is still gaining at 2,000 steps"
    noisy, _ = _rows("HPT", {50: (0.9, 0.9, 0.9), 500: (0.96, 0.84, 0.9)})
    judged = gains(group_cells(noisy), "mnist", "HPT", [50, 500])
    assert judged[0][2].verdict == "unresolved"
    assert summary("HPT", judged) == ("no plateau shown for HPT up to 500 steps (its last "
                                      "gain is unresolved)")
    short = [r for r in _rows("HPT-BN", {50: (0.9,) * 3, 500: (0.95,) * 3})[0]
             if not (r.steps == 500 and r.seed == 2)]
    md = "\n".join(convergence_markdown(group_cells(short), "mnist", ["HPT-BN"], [50, 500]))
    assert "| inconclusive: 2 seed(s) shared by all cells, 3 needed" in md


def test_the_report_has_the_table_only_for_methods_with_two_budgets(tmp_path):
    rows = _rows("Target", {500: (0.5, 0.5, 0.5), 2000: (0.9, 0.9, 0.9)})[0] \
        + _rows("HPT", {500: (0.9, 0.9, 0.9)})[0]
    md = build_report(rows, tmp_path, "r").markdown
    section = md.split("gain with more target pretraining steps")[1]
    assert "| Target | 500 → 2,000 |" in section and "| HPT |" not in section
    assert "- Target is still gaining at 2,000 steps." in section
    assert "gain with more" not in build_report(_rows("HPT", {500: (0.9,) * 3})[0],
                                                tmp_path / "b", "r").markdown
