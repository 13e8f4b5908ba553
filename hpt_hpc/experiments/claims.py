"""The paper's claims judged from a sweep's evaluations: each claim is a set of claimed
(positive) differences between cells, each bootstrapped and judged by the rule in
:mod:`.evidence`; the claim's verdict follows from its comparisons' verdicts by the rule
the claim states (``all``: every comparison agrees; ``any``: one supported comparison is
enough). Prose may explain a verdict; it never overrides one.

A comparison is *inconclusive* when a cell it needs is missing, lacks per-image
predictions, or is a baseline whose mean score is below the random-init reference (the
baseline has not learned anything yet, so beating it says nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .evidence import (INCONCLUSIVE, SUPPORTED, Judgement, judge, overall, paired_bootstrap,
                       term)
from .results import Cell, find


@dataclass
class Claim:
    number: str
    text: str
    rule: str  # all | any
    judgements: List[Judgement] = field(default_factory=list)

    @property
    def verdict(self) -> Tuple[str, str]:
        if self.rule == "any" and any(j.verdict == SUPPORTED for j in self.judgements):
            return SUPPORTED, "at least one comparison supported (the claim's rule)"
        return overall(self.judgements)


MISSING = "a cell is missing"


def _missing(cell: Optional[Cell]) -> Optional[str]:
    if cell is None:
        return MISSING
    if any(r.predictions is None for r in cell.rows):
        return f"{cell.first.method} has no per-image predictions"
    return None


def compare(name: str, terms: Sequence[Tuple[float, Optional[Cell]]],
            baselines: Sequence[Optional[Cell]] = (), random_init: Optional[Cell] = None,
            ) -> Judgement:
    """Judge ``sum(w * score(cell))`` > 0; ``baselines`` must score above ``random_init``."""
    unmet = [m for m in (_missing(c) for _, c in terms) if m]
    for base in baselines:
        if base is not None and random_init is not None and base.mean < random_init.mean:
            unmet.append(f"{base.first.method} at {base.first.steps} steps "
                         f"({100 * base.mean:.1f}) is below the random-init reference "
                         f"({100 * random_init.mean:.1f})")
    if unmet:
        return judge(name, None, sorted(set(unmet)))
    targets = terms[0][1].rows[0].predictions.targets
    seeded = [(w, sorted(c.rows, key=lambda r: r.seed)) for w, c in terms]
    difference = paired_bootstrap([term(w, [r.predictions.predictions for r in rows], targets,
                                        [r.seed for r in rows]) for w, rows in seeded])
    return judge(name, difference)


def judge_claims(cells: Dict[Tuple, Cell], dataset: str, linear_steps: Sequence[int],
                 mode: str = "cached") -> List[Claim]:
    """Claims 1-5 of the paper and the compute-matched control, on ``dataset``."""
    def cell(method: str, steps: Optional[int] = None, **coords) -> Optional[Cell]:
        return find(cells, "linear", method, dataset, steps, mode=mode, **coords)

    rand = find(cells, "linear", "random-init", dataset)
    base = cell("Base")
    claims = []

    c1 = Claim("1", "HPT beats Base and Target in linear separability", "all")
    for s in linear_steps:
        if cell("HPT", s):
            c1.judgements.append(compare(f"HPT@{s} − Base", [(1, cell("HPT", s)),
                                                              (-1, base)]))
            if cell("Target", s):
                c1.judgements.append(compare(f"HPT@{s} − Target@{s}",
                                             [(1, cell("HPT", s)), (-1, cell("Target", s))],
                                             [cell("Target", s)], rand))
    claims.append(c1)

    c2 = Claim("2", "HPT reaches Target's quality with far (≥ 4×) fewer steps", "any")
    target_steps = sorted(s for s in linear_steps if cell("Target", s))
    if target_steps:
        top = target_steps[-1]
        for s in (s for s in linear_steps if s * 4 <= top and cell("HPT", s)):
            c2.judgements.append(compare(f"HPT@{s} − Target@{top}",
                                         [(1, cell("HPT", s)), (-1, cell("Target", top))],
                                         [cell("Target", top)], rand))
    claims.append(c2)

    c3 = Claim("3", "B+S+T is best in sequential transfer", "all")
    for s in sorted({k[3] for k in cells if k[1] == "B+S+T" and k[2] == dataset}):
        for other, steps in (("B+S", None), ("HPT", s), ("Base", None)):
            c3.judgements.append(compare(f"B+S+T@{s} − {'B+T' if other == 'HPT' else other}",
                                         [(1, cell("B+S+T", s)), (-1, cell(other, steps))]))
    claims.append(c3)

    c4 = Claim("4", "HPT degrades less than Target when augmentations are dropped", "all")
    presets = sorted({k[4] for k in cells if k[2] == dataset and k[4] != "all"})
    for p in presets:
        for s in sorted({k[3] for k in cells if k[4] == p and k[1] == "HPT"}):
            drop = [(1, cell("Target", s)), (-1, cell("Target", s, augment=p)),
                    (-1, cell("HPT", s)), (1, cell("HPT", s, augment=p))]
            c4.judgements.append(compare(f"Target drop − HPT drop ({p}, {s} steps)", drop,
                                         [cell("Target", s)], rand))
    claims.append(c4)

    c5 = Claim("5", "HPT beats Target, and HPT-BN beats HPT, with little target data", "all")
    amounts = sorted({k[5] for k in cells if k[2] == dataset and k[5] != "all"},
                     key=lambda v: int(v) if str(v).isdigit() else 0)
    for n in amounts:
        for s in sorted({k[3] for k in cells if k[5] == n and k[1] == "HPT"}):
            c5.judgements.append(compare(f"HPT − Target ({n} images)",
                                         [(1, cell("HPT", s, images=n)),
                                          (-1, cell("Target", s, images=n))],
                                         [cell("Target", s, images=n)], rand))
            c5.judgements.append(compare(f"HPT-BN − HPT ({n} images)",
                                         [(1, cell("HPT-BN", s, images=n)),
                                          (-1, cell("HPT", s, images=n))]))
    claims.append(c5)

    c6 = Claim("C", "HPT's gain over Base comes from the target data, not from more steps "
                    "(HPT beats Base+N, base continued N steps on base data)", "all")
    for s in sorted({k[3] for k in cells if k[1] == "Base+N" and k[2] == dataset}):
        c6.judgements.append(compare(f"HPT@{s} − Base+N@{s}", [(1, cell("HPT", s)),
                                                                (-1, cell("Base+N", s))]))
    claims.append(c6)
    return [c for c in claims if c.judgements]


def claims_markdown(claims: Sequence[Claim]) -> List[str]:
    """The verdict table and each comparison's difference with its interval."""
    from .tables import markdown_table
    if not claims:
        return []
    rows = []
    for c in claims:
        verdict, why = c.verdict
        rows.append([c.number, c.text, f"**{verdict}** ({why})"])
    lines = markdown_table(["#", "claim", "verdict"], rows) + [""]
    detail = []
    for c in claims:
        for j in c.judgements:
            diff = j.difference.text() if j.difference else "–"
            detail.append([c.number, j.comparison, diff, j.verdict,
                           "; ".join(j.reasons) if j.verdict == INCONCLUSIVE else ""])
    lines += markdown_table(["#", "comparison (claimed > 0)", "difference, points [95 % CI]",
                             "verdict", "why inconclusive"], detail)
    return lines + [""]
