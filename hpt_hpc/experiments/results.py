"""A sweep's evaluation results, read back from the MLflow store (or the result files).

Every evaluation run carries its unit's coordinates as tags (``hpt.method``,
``hpt.dataset``, ``hpt.target_steps``, ``hpt.seed``, ``hpt.augment``, ``hpt.images``,
``hpt.protocol``) and its score as metrics (``score``, ``score_std``, ``curve_test``).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import HptError

REFERENCE_LABELS = {"raw-pixels": "raw pixels (reference)",
                    "random-init": "random init (reference)"}


@dataclass
class EvalRow:
    """One finished evaluation (a seed of one cell)."""

    method: str
    dataset: str
    protocol: str
    steps: int
    seed: int
    augment: str
    images: str
    score: float
    std: float
    repeats: int
    mode: str
    metric: str
    curve: List[Tuple[int, float]] = field(default_factory=list)  # (probe step, test score)
    run_id: str = ""

    @property
    def key(self) -> Tuple:
        return (self.protocol, self.method, self.dataset, self.steps, self.augment, self.images)


@dataclass
class Cell:
    """The seeds of one cell, aggregated: mean over seeds; std over seeds when there are
    several, else the probe repeats' std."""

    rows: List[EvalRow]

    @property
    def first(self) -> EvalRow:
        return self.rows[0]

    @property
    def mean(self) -> float:
        return statistics.fmean(r.score for r in self.rows)

    @property
    def std(self) -> float:
        if len(self.rows) > 1:
            return statistics.stdev(r.score for r in self.rows)
        return self.first.std

    @property
    def spread_source(self) -> str:
        return f"{len(self.rows)} seeds" if len(self.rows) > 1 else \
            f"{self.first.repeats} probe repeats"

    def text(self) -> str:
        return f"{100 * self.mean:.1f} ± {100 * self.std:.1f}"

    def curve(self) -> List[Tuple[int, float]]:
        curves = [r.curve for r in self.rows if r.curve]
        if not curves:
            return []
        length = min(len(c) for c in curves)
        return [(curves[0][i][0], statistics.fmean(c[i][1] for c in curves))
                for i in range(length)]


def _row(tags: Dict[str, str], score: float, std: float, repeats: float,
         curve: List[Tuple[int, float]], run_id: str = "") -> EvalRow:
    return EvalRow(method=tags["hpt.method"], dataset=tags["hpt.dataset"],
                   protocol=tags.get("hpt.protocol", "linear"),
                   steps=int(tags.get("hpt.target_steps", 0)), seed=int(tags.get("hpt.seed", 0)),
                   augment=tags.get("hpt.augment", "all"), images=tags.get("hpt.images", "all"),
                   score=float(score), std=float(std), repeats=int(repeats),
                   mode=tags.get("hpt.eval_mode", "?"), metric=tags.get("hpt.metric", "top1"),
                   curve=curve, run_id=run_id)


def rows_from_mlflow(uri: str, experiment: str, sweep: str) -> List[EvalRow]:
    """FINISHED evaluation runs of ``sweep`` (the newest run per unit)."""
    from ..tracking.runs import client_for
    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise HptError(f"MLflow experiment '{experiment}' not found in {uri}; has the sweep "
                       f"run? (hpt-hpc sweep <experiment file>)")
    newest: Dict[str, object] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id],
                                  f"tags.`hpt.sweep` = '{sweep}' and tags.`hpt.unit_kind` = "
                                  f"'eval' and attributes.status = 'FINISHED'",
                                  max_results=1000, page_token=token)
        for run in page:
            unit = run.data.tags["hpt.unit"]
            if unit not in newest or run.info.start_time > newest[unit].info.start_time:
                newest[unit] = run
        token = page.token
        if not token:
            break
    rows = []
    for unit, run in sorted(newest.items()):
        metrics = run.data.metrics
        history = client.get_metric_history(run.info.run_id, "curve_test")
        curve = sorted((int(m.step), float(m.value)) for m in history)
        rows.append(_row(run.data.tags, metrics.get("score", float("nan")),
                         metrics.get("score_std", 0.0), metrics.get("repeats", 1), curve,
                         run.info.run_id))
    return rows


def rows_from_files(output_dir: Path) -> List[EvalRow]:
    """The same rows from ``<output>/units/*/results/*.json`` (tracking switched off)."""
    rows = []
    for path in sorted(Path(output_dir).glob("units/*/results/*.json")):
        data = json.loads(path.read_text())
        tags = dict(data["tags"], **{"hpt.eval_mode": data["mode"], "hpt.metric": data["metric"]})
        curve = [(int(step), float(test)) for step, _, test in data.get("curve", [])]
        rows.append(_row(tags, data["score"], data["score_std"], data["repeats"], curve))
    return rows


def group_cells(rows: Sequence[EvalRow]) -> Dict[Tuple, Cell]:
    cells: Dict[Tuple, Cell] = {}
    for row in rows:
        cells.setdefault(row.key, Cell([])).rows.append(row)
    return cells


def find(cells: Dict[Tuple, Cell], protocol: str, method: str, dataset: str,
         steps: Optional[int] = None, augment: str = "all", images: str = "all",
         ) -> Optional[Cell]:
    """The cell of these coordinates (``steps=None``: methods without a step budget)."""
    if steps is None:
        steps = 0
    return cells.get((protocol, method, dataset, steps, augment, images))
