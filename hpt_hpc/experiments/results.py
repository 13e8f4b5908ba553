"""Evaluation records read back (from the MLflow store or the result files), grouped into
cells of seeds, and ``hpt-hpc runs``: a pipeline's stage and evaluation runs as one table.
"""
from __future__ import annotations

import math
import re
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import OutputLayout
from ..config.protocols import probe_mode
from ..config.refs import INIT_TAG, OLD_INIT_TAG
from ..errors import HptError
from ..eval.record import (PREDICTIONS_ARTIFACTS, CellKey, EvalRecord, Predictions,
                           is_eval_run, read_record_files)
from ..plan.methods import DEFAULT_SSL, REFERENCE_LABELS
from ..tracking.filters import run_filter
from ..tracking.store import TrackingError, reader_for
from .evidence import Interval, seed_interval
from .tables import markdown_table, text_table

RUN_THE_SWEEP = "run `hpt-hpc sweep <experiment file>` first, or give --tracking-uri"


def along_caveat(subject: str, along: int) -> str:
    """The schedule caveat's wording: ``<subject> <N>-step runs (their schedule...)``."""
    return f"{subject} {along:,}-step runs (their learning-rate schedule spans {along:,} steps)"


@dataclass
class Cell:
    """The seeds of one cell, aggregated: mean over seeds and a 95 % t-interval over them
    (:func:`.evidence.seed_interval`; over the base seeds' means when the cell has several
    base seeds); std over seeds when there are several, else the probe repeats' std (none
    for one probe or a kNN vote)."""

    rows: List[EvalRecord]

    @property
    def first(self) -> EvalRecord:
        return self.rows[0]

    @property
    def mean(self) -> float:
        return statistics.fmean(r.score for r in self.rows)

    @property
    def std(self) -> float:
        if len(self.rows) > 1:
            return statistics.stdev(r.score for r in self.rows)
        return self.first.score_std

    @property
    def spread_source(self) -> str:
        return f"{len(self.rows)} seeds" if len(self.rows) > 1 else \
            f"{self.first.repeats} probe repeats"

    @property
    def bases(self) -> List[int]:
        return sorted({r.base_seed for r in self.rows})

    @property
    def interval(self) -> Interval:
        """Over the seeds; with several base seeds, over the base seeds' means."""
        if len(self.bases) > 1:
            return seed_interval([statistics.fmean(r.score for r in self.rows
                                                   if r.base_seed == b) for b in self.bases])
        return seed_interval([r.score for r in self.rows])

    @property
    def seed_scores(self) -> List[float]:
        return [r.score for r in self.rows]

    @property
    def along(self) -> int:
        """The steps of the runs whose checkpoints this cell probed along the way (0: the
        runs' final checkpoints; one value per cell, :func:`group_cells`)."""
        return self.first.along

    def schedule_note(self, name: str) -> str:
        """The schedule caveat of an along-the-way cell named ``name`` ('' for finals)."""
        if not self.along:
            return ""
        return along_caveat(f"{name} is the {self.first.steps:,}-step checkpoint of",
                            self.along)

    def text(self) -> str:
        """``mean [low, high] (n=seeds)``, ``mean ± repeats' std (n=1)``, or ``mean (n=1)``
        when one evaluation has no spread (one probe, a kNN vote); a cell probed along a
        longer run ends in ``, of <N>-step runs``."""
        along = f", of {self.along}-step runs" if self.along else ""
        if len(self.rows) == 1 and self.first.repeats > 1:
            return f"{100 * self.mean:.1f} ± {100 * self.std:.1f} (n=1)" + along
        if len(self.bases) > 1:
            targets = len({r.seed for r in self.rows})
            return self.interval.text().replace(
                f"(n={len(self.bases)})", f"(n={len(self.bases)} base × {targets} target)") \
                + along
        return self.interval.text() + along

    def curve(self) -> List[Tuple[int, float]]:
        """Mean test score against probe steps over the cell's seeds."""
        curves = [r.curve for r in self.rows if r.curve]
        if not curves:
            return []
        length = min(len(c) for c in curves)
        return [(curves[0][i][0], statistics.fmean(c[i][2] for c in curves))
                for i in range(length)]


def rows_from_mlflow(uri: str, experiment: str, sweep: str,
                     keep: Callable[[str], bool] = lambda unit: True) -> List[EvalRecord]:
    """FINISHED evaluation runs of ``sweep`` (the newest run per unit ``keep`` accepts)."""
    client = reader_for(uri, hint=RUN_THE_SWEEP)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise HptError(f"MLflow experiment '{experiment}' not found in {uri}: "
                       f"{RUN_THE_SWEEP}")
    newest: Dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs([exp.experiment_id],
                                  run_filter({"hpt.sweep": sweep, "hpt.unit_kind": "eval"},
                                             status="FINISHED"),
                                  max_results=1000, page_token=token)
        for run in page:
            unit = run.data.tags["hpt.unit"]
            if unit not in newest and not keep(unit):
                continue
            if unit not in newest or run.info.start_time > newest[unit].info.start_time:
                newest[unit] = run
        token = page.token
        if not token:
            break
    records = [EvalRecord.from_run(run, client) for _, run in sorted(newest.items())]
    with tempfile.TemporaryDirectory(prefix="hpt-predictions-") as folder:
        for record in records:
            record.predictions = _run_predictions(uri, record.run_id, Path(folder))
    return records


def _run_predictions(uri: str, run_id: str, folder: Path) -> Optional[Predictions]:
    """The predictions artifact of an evaluation run (``None`` for runs without one)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException
    try:
        local = download_artifacts(run_id=run_id, artifact_path=PREDICTIONS_ARTIFACTS,
                                   dst_path=str(folder / run_id), tracking_uri=uri)
    except (MlflowException, OSError):
        return None
    files = sorted(Path(local).glob("*.npz"))
    return Predictions.load(files[0]) if files else None


def rows_from_files(output_dir: Path,
                    keep: Callable[[str], bool] = lambda unit: True) -> List[EvalRecord]:
    """The same records from ``<output>/units/*/results/<unit>.json`` (tracking switched
    off), of the units ``keep`` accepts."""
    return read_record_files([p for p in OutputLayout(Path(output_dir)).eval_results()
                              if keep(p.stem)])


class Planned:
    """``keep`` for the two readers above: the evaluation units an experiment file plans;
    the others it was asked about (units the file no longer plans) in ``left_out``."""

    def __init__(self, units) -> None:
        self.units, self.left_out = set(units), set()

    @classmethod
    def by(cls, spec) -> "Planned":
        """The evaluation units of the experiment ``spec`` (an ExperimentSpec)."""
        from ..plan.units import expand
        return cls(e.unit_id for e in expand(spec).evals)

    def __call__(self, unit: str) -> bool:
        if unit not in self.units:
            self.left_out.add(unit)
        return unit in self.units


# The results table: one row per evaluation, column -> EvalRecord field (``_pct``: the
# fraction as percent, 4 decimals). The report's CSV and hpt_hpc.results() are this table.
_COLUMNS = (("protocol", "protocol"), ("method", "method"), ("dataset", "dataset"),
            ("target_steps", "steps"), ("along_steps", "along"), ("seed", "seed"),
            ("base_seed", "base_seed"), ("augment", "augment"),
            ("pretrain_images", "pretrain_images"), ("images_axis", "images"),
            ("queue_size_keys", "queue_size"), ("probe_labels_per_class", "probe_labels"),
            ("score_pct", "score"), ("score_std_pct", "score_std"),
            ("val_score_pct", "val_score"), ("best_step", "best_step"),
            ("repeats", "repeats"), ("mode", "mode"), ("metric", "metric"),
            ("ssl", "ssl"), ("pretrain_seconds", "pretrain_seconds"),
            ("checkpoint", "checkpoint"),
            ("run_id", "run_id"))
RESULT_COLUMNS = tuple(column for column, _ in _COLUMNS)
_PERCENT = {"score", "score_std", "val_score"}
_PATHS = {"checkpoint"}


def result_rows(records: Sequence[EvalRecord],
                output_dir: Optional[Path] = None) -> List[Dict[str, Any]]:
    """The results table of ``records``: one dict per evaluation, keys
    :data:`RESULT_COLUMNS` in order; with ``output_dir``, paths below the experiment's
    output folder are relative to it (:meth:`OutputLayout.relative`)."""
    layout = OutputLayout(Path(output_dir)) if output_dir is not None else None

    def cell(record: EvalRecord, field: str) -> Any:
        value = getattr(record, field)
        if field in _PERCENT:
            return round(100 * value, 4)
        return layout.relative(value) if field in _PATHS and layout else value
    return [{column: cell(r, f) for column, f in _COLUMNS} for r in records]


def ssl_of(record: EvalRecord) -> str:
    """The ssl method of an evaluated checkpoint ("" for a reference row; a trained one
    recorded before the method was: MoCo-v2, the only one then)."""
    if record.ssl or record.method in REFERENCE_LABELS:
        return record.ssl
    return DEFAULT_SSL


def ssl_methods(records: Sequence[EvalRecord]) -> List[str]:
    """The ssl methods of the trained checkpoints among ``records``."""
    return sorted({ssl_of(r) for r in records} - {""})


def group_cells(rows: Sequence[EvalRecord]) -> Dict[Tuple, Cell]:
    """The records by cell; a cell holding both checkpoints probed along a run and runs'
    final checkpoints (or along runs of several lengths) is refused: its seeds would
    average two schedules."""
    cells: Dict[Tuple, Cell] = {}
    for row in rows:
        cell = cells.setdefault(row.key, Cell([]))
        if cell.rows and cell.along != row.along:
            a, b = sorted((cell.along, row.along))
            what = f"checkpoints probed along {a}-step runs" if a else \
                f"the final checkpoints of {row.steps}-step runs"
            raise HptError(f"cell {row.method}@{row.steps} ({row.dataset}) mixes {what} with "
                           f"checkpoints probed along {b}-step runs (two schedules); report "
                           f"them separately: one experiment file gives a method's step as a "
                           f"budget or in probe_at, not both")
        cell.rows.append(row)
    return cells


def find(cells: Dict[Tuple, Cell], protocol: str, method: str, dataset: str,
         steps: Optional[int] = None, augment: str = "all", images: str = "all",
         labels: str = "all", mode: Optional[str] = None) -> Optional[Cell]:
    """The cell of these coordinates (``steps=None``: methods without a step budget;
    ``mode``: a linear probe's mode, default the protocol's default mode)."""
    if mode is None:
        mode = probe_mode(protocol, "")  # the protocol's default mode
    return cells.get(CellKey(protocol, method, dataset, steps or 0, augment, str(images),
                             str(labels), mode))


# -- hpt-hpc runs -------------------------------------------------------------------------
RUN_COLUMNS = ("run", "kind", "method", "dataset", "steps", "loss", "test", "val",
               "status", "started from")


def _experiments(client: Any, experiment: Optional[str]) -> List[str]:
    if experiment:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = [e.name for e in client.search_experiments()]
            raise TrackingError(f"no experiment '{experiment}' (experiments: "
                                f"{', '.join(names) or 'none'})")
        return [exp.experiment_id]
    return [e.experiment_id for e in client.search_experiments()]


def find_pipeline_run(client: Any, pipeline: Optional[str] = None,
                      experiment: Optional[str] = None) -> Any:
    """A pipeline run by id, or the newest pipeline run named ``pipeline`` (or any)."""
    if pipeline and re.fullmatch(r"[0-9a-f]{32}", pipeline):
        return client.get_run(pipeline)
    query = run_filter({"hpt.kind": "pipeline", **({"hpt.pipeline": pipeline} if pipeline
                                                    else {})})
    runs = client.search_runs(_experiments(client, experiment), query,
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError(f"no pipeline run{f' named {pipeline!r}' if pipeline else ''} in "
                            f"{client.tracking_uri}")
    return runs[0]


def _fmt(value: Optional[float], percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


def _cells(run: Any, names: Dict[str, str]) -> Tuple[str, ...]:
    tags, metrics = run.data.tags, run.data.metrics
    src = tags.get(INIT_TAG) or tags.get(OLD_INIT_TAG, "")  # runs before #27: both
    if tags.get("hpt.init_run_id") in names:
        src += f" <- {names[tags['hpt.init_run_id']]}"
    test = val = "-"
    kind = tags.get("hpt.kind", "?")
    if is_eval_run(run):
        record = EvalRecord.from_run(run)
        kind = f"{kind}: {record.evaluation}"
        unit = " AUROC" if record.metric == "auroc" else ""
        test, val = _fmt(record.score, True), _fmt(record.val_score, True)
        test = test + unit if test != "-" else test
    steps = tags.get("hpt.steps") or tags.get("hpt.target_steps", "-")
    return (run.info.run_name or run.info.run_id[:8], kind,
            tags.get("hpt.method", "-"), tags.get("hpt.dataset", "-"), steps,
            _fmt(metrics.get("loss")), test, val, run.info.status, src or "-")


def pipeline_rows(client: Any, pipeline: Optional[str] = None,
                  experiment: Optional[str] = None) -> Tuple[Any, List[Tuple[str, ...]]]:
    """The pipeline run and one row of cells per nested stage/evaluation run (stages
    first, oldest first)."""
    parent = find_pipeline_run(client, pipeline, experiment)
    children = client.search_runs([parent.info.experiment_id],
                                  run_filter({"mlflow.parentRunId": parent.info.run_id}),
                                  order_by=["attributes.start_time ASC"], max_results=5000)
    names = {r.info.run_id: r.info.run_name for r in children}
    children = sorted(children, key=lambda r: 0 if r.data.tags.get("hpt.kind") == "stage"
                      else 1)
    return parent, [_cells(r, names) for r in children]


def format_runs(rows: Sequence[Sequence[str]], markdown: bool = False) -> str:
    if markdown:
        return "\n".join(markdown_table(RUN_COLUMNS, rows))
    return "\n".join(text_table(RUN_COLUMNS, rows))
