"""What a checkpoint evaluated on its own (``hpt-hpc probe``/``finetune``/``embed``) is,
and where its run goes.

A toolkit checkpoint records its stage, method, step budget, label and stage run
(:func:`~hpt_hpc.models.weights.checkpoint_info`; older ones: derived by
:mod:`hpt_hpc.plan.lineage`). Its evaluation is filed as a sweep files its evaluations:
beside the stage run (same experiment, nested under the same pipeline run, the same
``hpt.pipeline``) when the config's store holds that run, and named after it
(``probe mnist of target``). A checkpoint of another toolkit (MoCo, OpenSelfSup,
torchvision) keeps a top-level run, method ``external (<layout>)``; a random init is the
``random-init`` reference.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ..config import ExperimentConfig, InitRef, OutputLayout, StageLayout
from ..models.loading import checkpoint_info
from ..models.resolve import resolve
from ..plan import TrackingTarget, external_method, tracking_target
from ..plan.lineage import checkpoint_along, checkpoint_method, checkpoint_steps
from ..tracking.runs import open_run, run_place
from .record import record_tags

RANDOM_INIT = "random-init"


@dataclass(frozen=True)
class Lineage:
    """The evaluated checkpoint: ``path`` (None: random init), its method, stage, step
    budget, the stage run it ``evaluates`` (its label), where the evaluation logs, and the
    stage's folder when the file is a stage's final checkpoint (its ``result.json``)."""

    method: str
    path: Optional[str]
    stage: Optional[str] = None
    steps: int = 0
    evaluates: Optional[str] = None
    tracking: Optional[TrackingTarget] = None
    layout: Optional[StageLayout] = None
    along: int = 0  # a checkpoint saved along a run of this many steps (0: a final one)

    def name(self, what: str) -> str:
        """The run's name: ``<what> of <evaluated stage run>``, or ``what`` alone."""
        return f"{what} of {self.evaluates}" if self.evaluates else what

    def tags(self, reference: InitRef, dataset: str) -> Dict[str, str]:
        """The lineage as tags, spelled by the evaluation record."""
        return record_tags(method=self.method, dataset=dataset, steps=self.steps,
                           checkpoint=reference.text or "none",
                           evaluates=self.evaluates or "none", stage=self.stage or "none",
                           along=self.along)


def checkpoint_lineage(cfg: ExperimentConfig, ref: InitRef, who: str) -> Lineage:
    """Resolve ``ref`` (downloads are cached under ``<output_dir>/evaluations/``) and read
    what the checkpoint is; bad references fail as :meth:`InitRef.resolve` does."""
    target = tracking_target(cfg)
    layout = OutputLayout(Path(cfg.output_dir).resolve()).evaluations
    resolved = resolve(ref, layout, target.uri if target else None, who=who)
    if resolved.path is None:
        return Lineage(RANDOM_INIT, None, tracking=target)
    info = checkpoint_info(resolved.path)
    if not info.is_toolkit:
        return Lineage(external_method(info.layout), resolved.path, tracking=target)
    run_id = info.run_id or resolved.tags.get("hpt.init_run_id")
    place = run_place(target.uri, run_id) if target and run_id else None
    if place is not None:
        target = dataclasses.replace(target, experiment=place.experiment,
                                     pipeline=place.pipeline or target.pipeline,
                                     parent_run_id=place.parent_run_id)
    return Lineage(checkpoint_method(info), resolved.path, info.stage, checkpoint_steps(info),
                   info.label or info.stage, target, StageLayout.finished_at(resolved.path),
                   checkpoint_along(info))


def log_embedding(lineage: Lineage, reference: InitRef, dataset: str, split: str,
                  params: Dict[str, Any]) -> Optional[str]:
    """One FINISHED ``embed`` run with the lineage tags and ``params`` (None: tracking
    off); returns its id."""
    target = lineage.tracking
    if target is None:
        return None
    tracker = open_run(target.uri, target.experiment, lineage.name(f"embed {dataset}/{split}"),
                       "embed", tags={**target.tags(), **lineage.tags(reference, dataset)},
                       parent_run_id=target.parent_run_id, system_metrics=False,
                       flush_seconds=target.flush_seconds)
    status = "FAILED"
    try:
        tracker.log_params({f"embed.{k}": v for k, v in params.items()})
        status = "FINISHED"
    finally:
        tracker.close(status)
    return tracker.run_id
