"""Running a :class:`StagePlan`: its loader, its initial checkpoint, its MLflow run, the
engine, and the stage's record (``result.json``, :class:`StageRecord`). What every
executor's stage job calls.

A stage resumed from ``last.pt`` continues the MLflow run saved in that checkpoint, so a
requeued job never makes a second run.
"""
from __future__ import annotations

import logging
import socket
from typing import Callable, Optional

from ..data import build_pretrain_loader
from ..files import remove_folder_temporaries
from ..models import checkpoint_run_id
from ..models.resolve import resolve
from ..plan import StagePlan, training_records
from ..plan.plans import config_dict
from ..plan.record import StageRecord
from ..tracking import NullTracker, Tracker
from ..tracking.registry import alias_for
from ..tracking.runs import open_run
from .distributed import DistInfo
from .engine import run_stage
from .resume import stage_lock
from ..device import limit_cpu_threads, resolve_device

log = logging.getLogger(__name__)


def build_stage_loader(plan: StagePlan, dist: Optional[DistInfo] = None):
    """The pretraining loader of a stage for this rank (2 global + any local views;
    backend from ``data.backend``)."""
    dist = dist or DistInfo()
    cfg = plan.config
    records = training_records(cfg, plan.stage, plan.batch_size)
    return build_pretrain_loader(records, cfg.augment, cfg.data,
                                 batch_size=plan.rank_batch_size, seed=cfg.seed,
                                 rank=dist.rank, world_size=dist.world_size)


def open_stage_tracker(plan: StagePlan, rank: int = 0) -> Tracker:
    """The stage's MLflow run (rank 0 only; a ``NullTracker`` when tracking is off),
    continuing the run saved in ``last.pt``; checkpoints register under
    ``<pipeline>-<label>``."""
    target = plan.tracking
    if target is None or rank != 0:
        return NullTracker()
    return open_run(target.uri, target.experiment, plan.label, "stage",
                    tags=plan.run_tags(), parent_run_id=target.parent_run_id,
                    run_id=(checkpoint_run_id(str(plan.layout.last))
                            or checkpoint_run_id(str(plan.layout.previous))),
                    model_name=target.model_name, alias=alias_for(target.pipeline, plan.label),
                    folder=plan.layout.root, config=config_dict(plan),
                    flush_seconds=target.flush_seconds, system_metrics=target.system_metrics)


def run_plan(plan: StagePlan, dist: Optional[DistInfo] = None,
             tracker: Optional[Tracker] = None, stop_after: Optional[int] = None,
             should_stop: Optional[Callable[[int], bool]] = None,
             on_step: Optional[Callable[[int, float], None]] = None) -> StageRecord:
    """Resolve the init, build the loader and the tracker (closed at the end unless
    given), run the engine, and write the stage's record (rank 0)."""
    dist = dist or DistInfo()
    with stage_lock(plan.layout, plan.label, hold=dist.is_main):
        if dist.is_main:
            remove_folder_temporaries(plan.layout.checkpoints)
        result = _run_locked(plan, dist, tracker, stop_after, should_stop, on_step)
    result.host = socket.gethostname()
    if dist.is_main:
        result.write(plan.layout)
    log.info("stage %s (%s): %d/%d steps in %.0f s, checkpoint %s", plan.label,
             result.variant, result.steps, result.total_steps, result.seconds,
             result.checkpoint)
    return result


def _run_locked(plan: StagePlan, dist: DistInfo, tracker: Optional[Tracker],
                stop_after: Optional[int], should_stop: Optional[Callable[[int], bool]],
                on_step: Optional[Callable[[int, float], None]]) -> StageRecord:
    uri = plan.tracking.uri if plan.tracking else None
    resolved = resolve(plan.init, plan.layout, uri, who=f"stage '{plan.stage}'")
    loader = build_stage_loader(plan, dist)
    own_tracker, status, result = tracker is None, "FAILED", None
    try:
        if own_tracker:
            tracker = open_stage_tracker(plan, dist.rank)
        lineage = dict(resolved.tags)
        if tracker.run_id and resolved.path and "hpt.init_run_id" not in lineage:
            run_id = checkpoint_run_id(resolved.path)
            if run_id:
                lineage["hpt.init_run_id"] = run_id
        tracker.set_tags(lineage)
        limit_cpu_threads(resolve_device(plan.config.device), plan.config.data.workers,
                          plan.config.compute.threads)
        result = run_stage(plan, loader, tracker=tracker, init=resolved.path, dist=dist,
                           stop_after=stop_after, on_step=on_step, should_stop=should_stop,
                           resolved=resolved)
        tracker.set_tags({"hpt.steps": result.steps, "hpt.total_steps": result.total_steps})
        status = "FINISHED" if result.completed else "KILLED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        close = getattr(loader, "close", None)
        if close is not None:
            close()
        if own_tracker and tracker is not None:
            tracker.close(status)
    return result
