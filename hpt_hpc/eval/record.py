"""The evaluation record: one set of metric names and tags written by every evaluation
path (``hpt-hpc probe``/``finetune``, sweep and quickstart evaluations) and read by
``hpt-hpc runs``, ``hpt-hpc report`` and the quickstart table.

MLflow: an evaluation run (tag ``hpt.kind=eval``) carries the coordinates as tags
(``hpt.protocol``, ``hpt.method``, ``hpt.dataset``, ``hpt.target_steps``, ``hpt.seed``,
``hpt.base_seed``,
``hpt.augment``, ``hpt.images``, ``hpt.eval_mode``, ``hpt.metric``, ``hpt.checkpoint``,
``hpt.evaluates``, ``hpt.stage``; ``hpt.along``: the steps of the run whose checkpoint at
``hpt.target_steps`` was probed along the way, 0 for a run's final) and the scores as metrics: ``score`` (test score at the
best val score, mean over probe repeats), ``score_std``, ``val_score``, ``best_step``,
``repeats``, ``pretrain_seconds``, ``score_repeat`` (one value per repeat, step = repeat
index) and the curves ``curve_val``/``curve_test`` (step = probe or fine-tune step); the
per-image test predictions as the artifact ``predictions.npz``. Files: the same record as JSON
(:meth:`EvalRecord.to_json`) with the predictions beside it (``<name>.npz``).

Predictions (:class:`Predictions`): ``predictions`` (repeats, images) predicted classes
(int16) or (repeats, images, classes) sigmoid scores (float16, multi-label data) at each
repeat's best val step; ``targets`` the test labels; ``paths`` the test images in order
(unreadable ones dropped). Any comparison can be re-tested from them without re-running.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..config.protocols import LINEAR, PROTOCOLS, find_mode, probe_mode
from ..files import atomic_write, write_text_atomic
from ..tracking import Tracker
from .metrics import TOP1

SCORE, SCORE_STD, VAL_SCORE, BEST_STEP, REPEATS = ("score", "score_std", "val_score",
                                                   "best_step", "repeats")
PRETRAIN_SECONDS, SCORE_REPEAT, CURVE_VAL, CURVE_TEST = ("pretrain_seconds", "score_repeat",
                                                         "curve_val", "curve_test")
_TAGS = {"protocol": "hpt.protocol", "method": "hpt.method", "dataset": "hpt.dataset",
         "steps": "hpt.target_steps", "seed": "hpt.seed", "base_seed": "hpt.base_seed",
         "augment": "hpt.augment",
         "images": "hpt.images", "mode": "hpt.eval_mode", "metric": "hpt.metric",
         "checkpoint": "hpt.checkpoint", "evaluates": "hpt.evaluates", "stage": "hpt.stage",
         "probe_labels": "hpt.probe_labels", "queue_size": "hpt.queue_size",
         "pretrain_images": "hpt.pretrain_images", "ssl": "hpt.ssl", "along": "hpt.along"}
PREDICTIONS_ARTIFACTS = "predictions"  # the run's artifact folder holding the .npz
_SCALARS = {"score": SCORE, "score_std": SCORE_STD, "val_score": VAL_SCORE,
            "best_step": BEST_STEP, "repeats": REPEATS,
            "pretrain_seconds": PRETRAIN_SECONDS}


class CellKey(NamedTuple):
    """The coordinates of a cell: the seeds of one cell share them."""

    protocol: str
    method: str
    dataset: str
    steps: int
    augment: str
    images: str
    labels: str
    mode: str  # cached | augmented (linear probes), "" (fine-tuning)


def mean_curve(curves: Sequence[Sequence[Any]]) -> List[Tuple[int, float, float]]:
    """Step-wise mean of several ``(step, val, test)`` curves (same steps)."""
    curves = [c for c in curves if c]
    if not curves:
        return []
    length = min(len(c) for c in curves)
    return [(int(curves[0][i][0]), statistics.fmean(c[i][1] for c in curves),
             statistics.fmean(c[i][2] for c in curves)) for i in range(length)]


@dataclass
class Predictions:
    """Per-image test predictions of every repeat, their targets and image paths."""

    predictions: np.ndarray
    targets: np.ndarray
    paths: List[str]

    def save(self, path: os.PathLike) -> Path:
        path = Path(path)
        with atomic_write(path) as handle:
            np.savez_compressed(handle, predictions=self.predictions, targets=self.targets,
                                paths=np.asarray(self.paths, dtype=str))
        return path

    @classmethod
    def load(cls, path: os.PathLike) -> "Predictions":
        with np.load(path, allow_pickle=False) as data:
            return cls(data["predictions"], data["targets"], [str(p) for p in data["paths"]])


@dataclass
class EvalRecord:
    """One finished evaluation of one checkpoint (or reference) on one dataset."""

    protocol: str  # linear | finetune
    method: str
    dataset: str
    mode: str  # cached | augmented | knn (k=<k>) | cached (raw pixels) | finetune (<n> labels)
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
    base_seed: int = 0  # the seed of the upstream (base, source) stages it started from
    augment: str = "all"
    images: str = "all"
    checkpoint: str = "none"
    evaluates: str = "none"  # the evaluated stage's run (label): a sweep's pretraining unit
    stage: str = "none"  # the evaluated checkpoint's stage
    pretrain_seconds: float = 0.0
    probe_labels: str = "all"  # linear probes: labelled training images per class
    queue_size: int = 0  # the evaluated stage's effective MoCo queue (0: none)
    pretrain_images: int = 0  # the evaluated stage's training images (0: none)
    ssl: str = ""  # the evaluated stage's ssl method ("": none, a reference)
    along: int = 0  # a checkpoint probed along a run of this many steps (0: a run's final)
    label: str = ""
    run_id: str = ""
    predictions_file: str = ""  # the Predictions beside a result file (name only)
    predictions: Optional[Predictions] = field(default=None, repr=False, compare=False)

    @property
    def probe_mode(self) -> str:
        """The mode of its cell (:func:`~hpt_hpc.config.protocols.probe_mode`)."""
        return probe_mode(self.protocol, self.mode)

    @property
    def trained(self) -> bool:
        """False for a vote (kNN): no probe steps, no repeats, nothing trained."""
        mode = find_mode(self.protocol, self.mode)
        return mode is None or mode.trained

    @property
    def evaluation(self) -> str:
        """What the evaluation is: ``linear probe (cached)``, ``linear probe (cached, raw
        pixels)``, ``kNN (k=20)``, ``fine-tune (100 labels)``."""
        mode = find_mode(self.protocol, self.mode)
        if mode is not None and not mode.trained:
            return mode.label + self.mode[len(mode.name):]
        entry = PROTOCOLS.get(self.protocol)
        if entry is not None and entry.modes:  # linear probe (cached, raw pixels)
            return f"{entry.title} ({self.mode.replace(' (', ', ').replace(')', '')})"
        return (entry.title if entry else self.protocol) + self.mode[len(self.protocol):]

    @property
    def key(self) -> CellKey:
        """The cell this record belongs to (seeds of one cell share it)."""
        return CellKey(self.protocol, self.method, self.dataset, self.steps, self.augment,
                       str(self.images), str(self.probe_labels), self.probe_mode)

    def tags(self) -> Dict[str, str]:
        return {tag: str(getattr(self, name)) for name, tag in _TAGS.items()}

    def describe(self) -> str:
        """One line: ``kNN (k=20) test top1 91.20 %, val 90.80 %``; a linear probe's test
        score at its best val score, ``top1 91.20 +- 0.35 % over 3 probes (mode:
        augmented)`` (one probe: no spread); ``fine-tune (100 labels): ...``."""
        score = f"{self.metric} {100 * self.score:.2f}"
        if not self.trained:
            return f"{self.evaluation} test {score} %, val {100 * self.val_score:.2f} %"
        if self.protocol != LINEAR:
            return (f"{self.evaluation} test {score} % at the best val score (val "
                    f"{100 * self.val_score:.2f} % at step {int(self.best_step)})")
        if self.repeats == 1:
            return f"{score} % (1 probe, mode: {self.mode})"
        return (f"{score} +- {100 * self.score_std:.2f} % over {self.repeats} probes "
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
        data = asdict(self)
        data.pop("predictions")
        return data

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
        return cls(protocol=coords["protocol"] or LINEAR, method=coords["method"],
                   dataset=coords["dataset"], mode=coords["mode"] or "?",
                   metric=coords["metric"] or TOP1, score=metrics.get(SCORE, math.nan),
                   score_std=metrics.get(SCORE_STD, 0.0),
                   val_score=metrics.get(VAL_SCORE, math.nan),
                   best_step=metrics.get(BEST_STEP, 0), repeats=int(metrics.get(REPEATS, 1)),
                   per_repeat=[v for _, v in history[SCORE_REPEAT]],
                   curve=[(s, val.get(s, math.nan), t) for s, t in history[CURVE_TEST]],
                   steps=int(coords["steps"] or 0), seed=int(coords["seed"] or 0),
                   base_seed=int(coords["base_seed"] or 0),
                   augment=coords["augment"] or "all", images=coords["images"] or "all",
                   checkpoint=coords["checkpoint"] or "none",
                   evaluates=coords["evaluates"] or "none", stage=coords["stage"] or "none",
                   pretrain_seconds=metrics.get(PRETRAIN_SECONDS, 0.0),
                   probe_labels=coords["probe_labels"] or "all",
                   queue_size=int(coords["queue_size"] or 0),
                   pretrain_images=int(coords["pretrain_images"] or 0),
                   ssl=coords["ssl"], along=int(coords["along"] or 0),
                   label=tags.get("hpt.label", ""), run_id=run.info.run_id)


def record_tags(**coords: Any) -> Dict[str, str]:
    """The tags of these record coordinates (``method=...``, ``stage=...``) for runs that
    are not evaluations (``hpt-hpc embed``): the one spelling of each."""
    return {_TAGS[name]: str(value) for name, value in coords.items()}


def save_predictions(record: EvalRecord, path: os.PathLike) -> Optional[Path]:
    """The record's predictions beside its result file ``path`` (``<name>.npz``)."""
    if record.predictions is None:
        return None
    saved = record.predictions.save(Path(path).with_suffix(".npz"))
    record.predictions_file = saved.name
    return saved


def write_record_file(record: EvalRecord, path: os.PathLike,
                      extra: Optional[Mapping[str, Any]] = None) -> None:
    """The record as JSON (atomic), plus ``extra`` (e.g. the run's tags), with its
    predictions beside it unless they were saved already."""
    path = Path(path)
    if not record.predictions_file:
        save_predictions(record, path)
    write_text_atomic(path, json.dumps({**record.to_json(), **(extra or {})}, indent=1,
                                       default=str))


def read_record_files(paths: Sequence[os.PathLike]) -> List[EvalRecord]:
    """Records from result files, with their predictions when they were saved."""
    records = []
    for path in map(Path, paths):
        record = EvalRecord.from_json(json.loads(path.read_text()))
        if record.predictions_file and (path.parent / record.predictions_file).is_file():
            record.predictions = Predictions.load(path.parent / record.predictions_file)
        records.append(record)
    return records


def is_eval_run(run: Any) -> bool:
    return run.data.tags.get("hpt.kind") == "eval"
