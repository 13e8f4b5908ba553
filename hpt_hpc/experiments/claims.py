"""The paper's claims judged from a sweep's evaluations: each claim is a set of claimed
(positive) differences between cells, each judged by the rule in :mod:`.evidence` on the
seeds its cells share; the claim's verdict follows from its comparisons' verdicts by the
rule the claim states (``all``: every comparison agrees; ``any``: one comparison
supported after Holm's correction over the claim's comparisons is enough). Each claim
states its equivalence margin. Prose may explain a verdict; it never overrides one.

A comparison is *inconclusive* when a cell it needs is missing or lacks per-image
predictions, when its cells share fewer than :data:`.evidence.MIN_SEEDS` seeds (the cells
named), when a baseline's mean score is below the random-init reference of the same probe
mode (the baseline has not learned anything yet, so beating it says nothing), or when a
baseline whose meaning needs it converged still gains more than that gain's interval by
its next longer budget (at its longest: since its previous one): "<method> not converged
at N steps".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from ..config.protocols import CACHED, LINEAR
from ..plan.methods import METHODS
from .evidence import (INCONCLUSIVE, LEVEL, MARGIN, MIN_SEEDS, SUPPORTED, UNRESOLVED,
                       Judgement, holm, judge, overall, paired_t, term)
from .results import Cell, find

Pair = Tuple[Optional[int], int]  # (base seed, target seed); None: the cell has no base


@dataclass
class Claim:
    number: str
    text: str
    rule: str  # all | any
    margin: float = MARGIN  # equivalence margin of this claim's differences
    judgements: List[Judgement] = field(default_factory=list)

    @property
    def verdict(self) -> Tuple[str, str]:
        if self.rule != "any":
            return overall(self.judgements)
        judged = [j for j in self.judgements if j.verdict != INCONCLUSIVE]
        if judged:
            rejected = holm([j.difference.p_above_zero() for j in judged], (1 - LEVEL) / 2)
            if any(rejected):
                return SUPPORTED, (f"{sum(rejected)} of {len(judged)} comparison(s) supported "
                                   f"after Holm's correction (the claim's rule: any)")
        downgraded = [j if j.verdict != SUPPORTED else
                      Judgement(j.comparison, UNRESOLVED, j.difference) for j in
                      self.judgements]
        verdict, why = overall(downgraded)
        if any(j.verdict == SUPPORTED for j in self.judgements):
            why += "; none supported after Holm's correction"
        return verdict, why


MISSING = "a cell is missing"


def label(cell: Cell) -> str:
    """A cell's name in a reason: method, budget and non-default coordinates."""
    r = cell.first
    name = r.method + (f"@{r.steps}" if r.steps else "")
    extra = [f"aug. {r.augment}" if r.augment != "all" else "",
             f"{r.images} images" if str(r.images) != "all" else ""]
    return name + "".join(f" ({e})" for e in extra if e)


def base_free(cell: Cell) -> bool:
    """A cell whose method starts from no upstream stage (Target, the references): its
    seeds pair with every base seed of the cells it is compared with."""
    recipe = METHODS.get(cell.first.method)
    return recipe is not None and recipe.starts_from is None


def seeds_of(cell: Cell) -> List[Pair]:
    return sorted({(None if base_free(cell) else r.base_seed, r.seed) for r in cell.rows},
                  key=lambda p: (p[0] or 0, p[1]))


def _seed_text(pairs: Sequence[Pair]) -> str:
    if all(b in (None, 0) for b, _ in pairs):
        return ", ".join(str(t) for _, t in pairs)
    return ", ".join(f"b{b or 0}:{t}" for b, t in pairs)


def shared(cells: Sequence[Cell]) -> List[Pair]:
    """The (base, target) seed pairs every cell has, as a full base × target grid."""
    targets = set.intersection(*({r.seed for r in c.rows} for c in cells))
    dependent = [c for c in cells if not base_free(c)]
    if not dependent:
        return [(None, t) for t in sorted(targets)]
    pairs = set.intersection(*(set(seeds_of(c)) for c in dependent))
    bases = sorted({b for b, _ in pairs})
    grid = [t for t in sorted(targets) if all((b, t) in pairs for b in bases)]
    return [(b, t) for b in bases for t in grid]


def levels(pairs: Sequence[Pair]) -> str:
    """Which levels a spread covers: ``1 base × 3 target seeds``, ``3 base × 3 ...``."""
    bases = len({b for b, _ in pairs if b is not None}) or 1
    targets = len({t for _, t in pairs})
    return f"{bases} base × {targets} target seed{'s' if targets != 1 else ''}"


def _missing(cell: Optional[Cell]) -> Optional[str]:
    if cell is None:
        return MISSING
    if any(r.predictions is None for r in cell.rows):
        return f"{cell.first.method} has no per-image predictions"
    return None


def _seed_problem(cells: Sequence[Cell]) -> Optional[str]:
    common = shared(cells)
    if len(common) >= MIN_SEEDS:
        return None
    most = max(len(seeds_of(c)) for c in cells)
    short = [c for c in cells if len(seeds_of(c)) < max(MIN_SEEDS, most)] or list(cells)
    named = ", ".join(f"{label(c)} has seed{'s' if len(seeds_of(c)) > 1 else ''} "
                      f"{_seed_text(seeds_of(c))}" for c in short)
    return f"{len(common)} seed(s) shared by all cells, {MIN_SEEDS} needed: {named}"


def _row(cell: Cell, pair: Pair):
    base, seed = pair
    return next(r for r in cell.rows if r.seed == seed
                and (base is None or base_free(cell) or r.base_seed == base))


def difference(terms: Sequence[Tuple[float, Cell]]):
    """The paired-t difference of ``sum(w * score(cell))`` on the seed pairs all cells
    share (two levels when they span several base seeds)."""
    pairs = shared([c for _, c in terms])
    targets = terms[0][1].rows[0].predictions.targets
    return paired_t([term(w, [_row(c, p).predictions.predictions for p in pairs], targets,
                          pairs) for w, c in terms])


def compare(name: str, terms: Sequence[Tuple[float, Optional[Cell]]],
            baselines: Sequence[Optional[Cell]] = (), random_init: Optional[Cell] = None,
            unconverged: Sequence[str] = (), margin: float = MARGIN) -> Judgement:
    """Judge ``sum(w * score(cell))`` > 0 on the cells' shared seeds; ``baselines`` must
    score above ``random_init`` (of the same probe mode); ``unconverged``: reasons."""
    unmet = [m for m in (_missing(c) for _, c in terms) if m]
    if not unmet:
        problem = _seed_problem([c for _, c in terms])
        unmet += [problem] if problem else []
    for base in baselines:
        if base is None:
            continue
        if random_init is None:
            unmet.append(f"no random-init reference in {base.first.mode} mode to check "
                         f"{label(base)} against")
        elif base.mean < random_init.mean:
            unmet.append(f"{base.first.method} at {base.first.steps} steps "
                         f"({100 * base.mean:.1f}) is below the random-init reference "
                         f"({100 * random_init.mean:.1f})")
    unmet += [u for u in unconverged if u]
    if unmet:
        judgement = judge(name, None, sorted(set(unmet)))
    else:
        diff = difference([(w, c) for w, c in terms])
        judgement = judge(name, diff, margin=margin,
                          seeds=levels(shared([c for _, c in terms])))
    judgement.schedule = [n for n in (c.schedule_note(label(c)) for _, c in terms if c) if n]
    return judgement


def judge_claims(cells: Dict[Tuple, Cell], dataset: str, linear_steps: Sequence[int],
                 mode: str = CACHED) -> List[Claim]:
    """Claims 1-5 of the paper and the compute-matched control, on ``dataset``."""
    def cell(method: str, steps: Optional[int] = None, **coords) -> Optional[Cell]:
        return find(cells, LINEAR, method, dataset, steps, mode=mode, **coords)

    def converged(method: str, steps: int, **coords) -> str:
        """Why ``method`` at ``steps`` is no plateau: it gains more than that gain's
        interval by its next longer budget, or (at its longest) since its previous one
        ('' when not, or when it has one budget only)."""
        budgets = sorted({k.steps for k in cells if k.protocol == LINEAR
                          and k.method == method and k.dataset == dataset and k.mode == mode
                          and cells[k] is cell(method, k.steps, **coords)})
        if steps not in budgets or len(budgets) < 2:
            return ""
        i = budgets.index(steps)
        low, high = (budgets[i - 1], steps) if i == len(budgets) - 1 else \
            (steps, budgets[i + 1])
        gain = compare(f"{method}@{high} − {method}@{low}",
                       [(1, cell(method, high, **coords)), (-1, cell(method, low, **coords))])
        if gain.verdict != SUPPORTED:  # missing, too few shared seeds, or not above 0
            return ""
        return (f"{method} not converged at {steps} steps ({gain.difference.text()} points "
                f"from {low} to {high} steps)")

    rand = find(cells, LINEAR, "random-init", dataset, mode=mode)
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
                                         [cell("Target", top)], rand,
                                         [converged("Target", top)]))
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
                                         [cell("Target", s)], rand,
                                         [converged("Target", s)]))
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


def claims_markdown(claims: Sequence[Claim],
                    caveats: Optional[Dict[str, str]] = None) -> List[str]:
    """The verdict table and each comparison's difference with its interval and seeds;
    ``caveats``: the experiment file's text per claim number, after that claim's verdict."""
    from .tables import markdown_table
    if not claims:
        return []
    rows = []
    for c in claims:
        verdict, why = c.verdict
        caveat = (caveats or {}).get(c.number)
        schedule = list(dict.fromkeys(n for j in c.judgements for n in j.schedule))
        rows.append([c.number, c.text, f"±{100 * c.margin:.1f}", f"**{verdict}** ({why})"
                     + (f"; caveat: {caveat}" if caveat else "")
                     + "".join(f"; schedule caveat: {n}" for n in schedule)])
    lines = markdown_table(["#", "claim", "equivalence margin, points", "verdict"], rows)
    detail = []
    for c in claims:
        for j in c.judgements:
            diff = j.difference.text() if j.difference else "–"
            detail.append([c.number, j.comparison, diff, j.seeds or "–", j.verdict,
                           "; ".join(j.reasons) if j.verdict == INCONCLUSIVE else ""])
    lines += [""] + markdown_table(["#", "comparison (claimed > 0)",
                                    "difference, points [95 % paired-t CI]",
                                    "seeds (base × target)", "verdict", "why inconclusive"],
                                   detail)
    return lines + [""]
