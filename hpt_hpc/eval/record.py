"""The evaluation record: one set of metric names and tags written by every evaluation
path (``hpt-hpc probe``/``finetune``, sweep and quickstart evaluations) and read by
``hpt-hpc runs``, ``hpt-hpc report`` and the quickstart table.

MLflow: an evaluation run (tag ``hpt.kind=eval``) carries the coordinates as tags
(``hpt.protocol``, ``hpt.method``, ``hpt.dataset``, ``hpt.target_steps``, ``hpt.seed``,
``hpt.augment``, ``hpt.images``, ``hpt.eval_mode``, ``hpt.metric``, ``hpt.checkpoint``,
``hpt.evaluates``) and the scores as metrics: ``score`` (test score at the best val score,
mean over probe repeats), ``score_std``, ``val_score``, ``best_step``, ``repeats``,
``pretrain_seconds``, ``score_repeat`` (one value per repeat, step = repeat index) and the
curves ``curve_val``/``curve_test`` (step = probe or fine-tune step). Files: the same
record as JSON (:meth:`EvalRecord.to_json`).
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..tracking import Tracker
from .metrics import TOP1

SCORE, SCORE_STD, VAL_SCORE, BEST_STEP, REPEATS = ("score", "score_std", "val_score",
                                                   "best_step", "repeats")
PRETRAIN_SECONDS, SCORE_REPEAT, CURVE_VAL, CURVE_TEST = ("pretrain_seconds", "score_repeat",
                                                         "curve_val", "curve_test")
_TAGS = {"protocol": "hpt.protocol", "method": "hpt.method", "dataset": "hpt.dataset",
         "steps": "hpt.target_steps", "seed": "hpt.seed", "augment": "hpt.augment",
         "images": "hpt.images", "mode": "hpt.eval_mode", "metric": "hpt.metric",
         "checkpoint": "hpt.checkpoint", "evaluates": "hpt.evaluates"}
_SCALARS = {"score": SCORE, "score_std": SCORE_STD, "val_score": VAL_SCORE,
            "best_step": BEST_STEP, "repeats": REPEATS,
            "pretrain_seconds": PRETRAIN_SECONDS}


def _mean_curve(curves: Sequence[Sequence[Any]]) -> List[Tuple[int, float, float]]:
    """Step-wise mean of several ``(step, val, test)`` curves (same steps)."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    length = min(len(c) for c in curves)
    return [(int(curves[0][i][0]), statistics.fmean(c[i][1] for c in curves),
             statistics.fmean(c[i][2] for c in curves)) for i in range(length)]


@dataclass
class EvalRecord:
    """One finished evaluation of one checkpoint (or reference) on one dataset."""

    protocol: str  # linear | finetune
    method: str
    dataset: str
    mode: str  # cached | augmented | cached (raw pixels) | finetune (<n> labels)
    metric: str  # top1 | auroc
    score: float
    score_std: float = 0.0
    val_score: float = math.nan
    best_step: float = 0
    repeats: int = 1
    per_repeat: List[float] = field(default_factory=list)
    curve: List[Tuple[int, float, float]] = field(default_factory=list)  # step, val, test
    steps: int = 0  # target pretraining steps of the evaluated checkpoint
    seed: int = 0
    augment: str = "all"
    images: str = "all"
    checkpoint: str = "none"
    evaluates: str = "none"  # the pretraining unit evaluated
    pretrain_seconds: float = 0.0
    label: str = ""
    run_id: str = ""

    @property
    def key(self) -> Tuple:
        """The cell this record belongs to (seeds of one cell share it)."""
        return (self.protocol, self.method, self.dataset, self.steps, self.augment,
                self.images)

    @classmethod
    def from_outcome(cls, protocol: str, outcome: Any, **coords: Any) -> "EvalRecord":
        """From a :class:`~hpt_hpc.eval.runner.LinearSummary` or a
        :class:`~hpt_hpc.eval.finetune.FinetuneResult`."""
        if protocol == "linear":
            results = outcome.results
            return cls("linear", mode=outcome.mode, metric=outcome.metric, score=outcome.mean,
                       score_std=outcome.std,
                       val_score=statistics.fmean(r.best_val for r in results),
                       best_step=statistics.fmean(r.best_step for r in results),
                       repeats=len(results),
                       per_repeat=[r.test_at_best_val for r in results],
                       curve=_mean_curve([r.curve for r in results]), **coords)
        return cls("finetune", mode=f"{outcome.mode} ({outcome.labels} labels)",
                   metric=outcome.metric, score=outcome.test_at_best_val,
                   val_score=outcome.best_val, best_step=outcome.best_step,
                   per_repeat=[outcome.test_at_best_val], curve=list(outcome.curve), **coords)

    def tags(self) -> Dict[str, str]:
        return {tag: str(getattr(self, name)) for name, tag in _TAGS.items()}

    def describe(self) -> str:
        """One line, e.g. ``top1 91.20 +- 0.35 % over 3 repeats (mode: augmented)``."""
        return (f"{self.metric} {100 * self.score:.2f} +- {100 * self.score_std:.2f} % over "
                f"{self.repeats} repeat{'s' if self.repeats != 1 else ''} "
                f"(mode: {self.mode})")

    def log(self, tracker: Tracker) -> None:
        """Write the record into an evaluation run."""
        tracker.set_tags(self.tags())
        tracker.log_metrics({metric: float(getattr(self, name))
                             for name, metric in _SCALARS.items()}, step=0)
        for i, value in enumerate(self.per_repeat):
            tracker.log_metrics({SCORE_REPEAT: value}, step=i)
        for step, val, test in self.curve:
            tracker.log_metrics({CURVE_VAL: val, CURVE_TEST: test}, step=int(step))

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "EvalRecord":
        names = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in names})
        record.curve = [(int(s), float(v), float(t)) for s, v, t in record.curve]
        return record

    @classmethod
    def from_run(cls, run: Any, client: Any = None) -> "EvalRecord":
        """From an MLflow evaluation run: its tags and metrics, and with a ``client`` the
        metric histories (curves, per-repeat scores)."""
        tags, metrics = run.data.tags, run.data.metrics
        coords = {name: tags.get(tag, "") for name, tag in _TAGS.items()}
        history = {name: sorted((int(m.step), float(m.value)) for m in
                                client.get_metric_history(run.info.run_id, name))
                   if client is not None else []
                   for name in (CURVE_VAL, CURVE_TEST, SCORE_REPEAT)}
        val = dict(history[CURVE_VAL])
        return cls(coords["protocol"] or "linear", coords["method"], coords["dataset"],
                   coords["mode"] or "?", coords["metric"] or TOP1,
                   metrics.get(SCORE, math.nan), metrics.get(SCORE_STD, 0.0),
                   metrics.get(VAL_SCORE, math.nan), metrics.get(BEST_STEP, 0),
                   int(metrics.get(REPEATS, 1)), [v for _, v in history[SCORE_REPEAT]],
                   [(s, val.get(s, math.nan), t) for s, t in history[CURVE_TEST]],
                   int(coords["steps"] or 0), int(coords["seed"] or 0),
                   coords["augment"] or "all", coords["images"] or "all",
                   coords["checkpoint"] or "none", coords["evaluates"] or "none",
                   metrics.get(PRETRAIN_SECONDS, 0.0), tags.get("hpt.label", ""),
                   run.info.run_id)


def write_record_file(record: EvalRecord, path: os.PathLike,
                      extra: Optional[Mapping[str, Any]] = None) -> None:
    """The record as JSON (atomic), plus ``extra`` (e.g. the run's tags)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps({**record.to_json(), **(extra or {})}, indent=1, default=str))
    os.replace(tmp, path)


def read_record_files(paths: Sequence[os.PathLike]) -> List[EvalRecord]:
    return [EvalRecord.from_json(json.loads(Path(p).read_text())) for p in paths]


def is_eval_run(run: Any) -> bool:
    return run.data.tags.get("hpt.kind") == "eval"
