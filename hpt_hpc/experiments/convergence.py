"""Where a method stops gaining with more target pretraining steps.

Each pair of successive budgets of a method (linear probe, default mode, all data) is a
claimed gain, judged by the claims' rule (:func:`.claims.compare`: paired t on the seeds
both cells share, the equivalence margin :data:`.evidence.MARGIN`): *gaining* (interval
above 0), *level* (inside ± the margin), *losing* (below 0), *unresolved* (contains 0,
reaches beyond the margin), *inconclusive* (why named). The rule for the summary line:
a method **plateaus from N steps** when every gain from N on is level; it is **still
gaining at N steps** when its last gain is gaining; otherwise **no plateau shown**. A cell
probed along a longer run carries the schedule caveat, as in the claims.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from ..config.protocols import LINEAR
from .claims import compare
from .evidence import (CONTRADICTED, EQUIVALENT, INCONCLUSIVE, MARGIN, SUPPORTED,
                       UNRESOLVED, Judgement)
from .results import Cell, along_caveat, find
from .tables import markdown_table

WORDS = {SUPPORTED: "gaining", EQUIVALENT: "level", CONTRADICTED: "losing",
         UNRESOLVED: "unresolved", INCONCLUSIVE: "inconclusive"}


def gains(cells: Dict[Tuple, Cell], dataset: str, method: str,
          steps: Sequence[int]) -> List[Tuple[int, int, Judgement]]:
    """``(from, to, judgement)`` for each pair of the method's successive budgets."""
    budgets = [s for s in sorted(steps) if find(cells, LINEAR, method, dataset, s)]
    out = []
    for low, high in zip(budgets, budgets[1:]):
        top, previous = (find(cells, LINEAR, method, dataset, s) for s in (high, low))
        out.append((low, high, compare(f"{method}@{high} − {method}@{low}",
                                       [(1, top), (-1, previous)], margin=MARGIN)))
    return out


def summary(method: str, judged: Sequence[Tuple[int, int, Judgement]]) -> str:
    """The module's rule, in one line."""
    verdicts = [j.verdict for _, _, j in judged]
    start = len(verdicts)
    while start > 0 and verdicts[start - 1] == EQUIVALENT:
        start -= 1
    if start < len(verdicts):
        return (f"{method} plateaus from {judged[start][0]:,} steps (every later gain "
                f"inside ±{100 * MARGIN:.1f} points)")
    if verdicts[-1] == SUPPORTED:
        return f"{method} is still gaining at {judged[-1][1]:,} steps"
    return (f"no plateau shown for {method} up to {judged[-1][1]:,} steps (its last gain "
            f"is {WORDS[verdicts[-1]]})")


def convergence_markdown(cells: Dict[Tuple, Cell], dataset: str, methods: Sequence[str],
                         steps: Sequence[int]) -> List[str]:
    """A table of every method's successive gains (methods with ≥ 2 budgets) and the
    summary line of each; [] when none has two."""
    rows, lines = [], []
    for method in methods:
        judged = gains(cells, dataset, method, steps)
        if not judged:
            continue
        for low, high, j in judged:
            rows.append([method, f"{low:,} → {high:,}",
                         j.difference.text() if j.difference else "–", j.seeds or "–",
                         WORDS[j.verdict] + (f": {'; '.join(j.reasons)}"
                                             if j.verdict == INCONCLUSIVE else "")])
        lines.append(f"- {summary(method, judged)}.")
        lines += _schedule(cells, dataset, method, steps)
    if not rows:
        return []
    out = [f"### {dataset}: gain with more target pretraining steps", "",
           f"Rule: a gain is *gaining* (95 % interval above 0), *level* (inside "
           f"±{100 * MARGIN:.1f} points), *losing*, *unresolved* or *inconclusive*; a method "
           f"plateaus from the budget after which every gain is level.", ""]
    out += markdown_table(["method", "steps", "gain, points [95 % paired-t CI]",
                           "seeds (base × target)", "verdict"], rows) + [""]
    return out + lines + [""]


def _schedule(cells: Dict[Tuple, Cell], dataset: str, method: str,
              steps: Sequence[int]) -> List[str]:
    """One caveat line per run length the method's cells were probed along."""
    along: Dict[int, List[int]] = {}
    for s in sorted(steps):
        cell = find(cells, LINEAR, method, dataset, s)
        if cell is not None and cell.along:
            along.setdefault(cell.along, []).append(s)
    return ["- Schedule caveat: " + along_caveat(
        f"{method}'s {', '.join(f'{s:,}' for s in at)}-step cells are checkpoints of", n) + "."
        for n, at in along.items()]
