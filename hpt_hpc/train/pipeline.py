"""Config-level stage running: where a stage writes, where it starts from, what feeds it.

The engine (:func:`run_stage`) takes everything passed in; this module builds those
pieces from an :class:`ExperimentConfig` for local runs, the launcher and the quickstart.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Tuple

from ..config import ExperimentConfig, stage_settings
from ..errors import HptError
from ..tracking import Tracker
from .distributed import DistInfo
from .engine import FINAL, StageResult, run_stage
from .state import limit_cpu_threads, resolve_device

log = logging.getLogger(__name__)


def stage_dir(cfg: ExperimentConfig, stage: str) -> Path:
    """Output folder of a stage: ``<output_dir>/<stage>``."""
    return Path(cfg.output_dir) / stage


def resolve_init_source(cfg: ExperimentConfig, stage: str, override: Optional[str] = None,
                        ) -> Tuple[Optional[str], Dict[str, str]]:
    """A stage's ``init`` as a local checkpoint path plus lineage tags.

    ``init`` is ``None`` (random), ``stage:<name>``, a file, ``models:/<name>@<alias>``,
    ``models:/<name>/<version>`` or ``runs:/<run_id>/<path>`` (the last three are downloaded
    once into ``<stage_dir>/init-cache/``). Fails before any work when the named stage has
    not finished, the file is missing, or the model, alias or run does not exist.
    """
    init = override if override is not None else cfg.stages[stage].init
    if not init:
        return None, {}
    if init.startswith(("models:/", "runs:/")):
        from ..tracking.lineage import fetch_init
        from ..tracking.store import resolve_tracking_uri
        return fetch_init(init, resolve_tracking_uri(cfg), stage_dir(cfg, stage) / "init-cache")
    if init.startswith("stage:"):
        ref = init.split(":", 1)[1]
        path = stage_dir(cfg, ref) / "checkpoints" / FINAL
        if not path.is_file():
            raise HptError(f"stage '{stage}' starts from stage '{ref}', but '{ref}' has no "
                           f"final checkpoint at {path}; run stage '{ref}' first")
        return str(path), {"hpt.init_source": init}
    if "://" not in init and not Path(init).is_file():
        raise HptError(f"stage '{stage}': init checkpoint '{init}' does not exist")
    return init, {"hpt.init_source": init}


def stage_records(cfg: ExperimentConfig, stage: str) -> list:
    """A stage's training images; fails (before any work) when the split is missing, empty
    or smaller than one global batch."""
    from ..data import list_split
    records, _ = list_split(cfg.datasets[cfg.stages[stage].dataset], "train")
    batch = stage_settings(cfg, stage)["batch_size"]
    if len(records) < batch:
        raise HptError(f"stage '{stage}': dataset '{cfg.stages[stage].dataset}' has "
                       f"{len(records)} training images, fewer than one global batch "
                       f"({batch}); lower optim.batch_size")
    return records


def build_stage_loader(cfg: ExperimentConfig, stage: str, dist: Optional[DistInfo] = None):
    """The two-view pretraining loader for a stage's dataset (backend from ``data.backend``)."""
    from ..data import build_pretrain_loader
    dist = dist or DistInfo()
    records = stage_records(cfg, stage)
    settings = stage_settings(cfg, stage, dist.world_size)
    return build_pretrain_loader(records, cfg.augment, cfg.data,
                                 batch_size=settings["rank_batch_size"],
                                 seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)


def run_configured_stage(cfg: ExperimentConfig, stage: str, tracker: Optional[Tracker] = None,
                         init: Optional[str] = None, dist: Optional[DistInfo] = None,
                         stop_after: Optional[int] = None,
                         should_stop: Optional[Callable[[int], bool]] = None,
                         parent_run_id: Optional[str] = None, label: Optional[str] = None,
                         method: Optional[str] = None,
                         extra_tags: Optional[Dict[str, str]] = None) -> StageResult:
    """Build the loader, init and tracker for ``stage`` and run it with the engine.

    Without a ``tracker`` one is made from ``cfg.tracking`` (nested under ``parent_run_id``;
    ``label``/``method`` name the run and its method tag, ``extra_tags`` are added) and
    closed at the end; a stage
    resumed from ``last.pt`` continues the MLflow run saved in it.
    """
    if stage not in cfg.stages:
        raise HptError(f"stage '{stage}' is not defined in the config (defined: "
                       f"{', '.join(cfg.stages) or 'none'})")
    dist = dist or DistInfo()
    init_path, lineage = resolve_init_source(cfg, stage, init)
    loader = build_stage_loader(cfg, stage, dist)
    own_tracker, status = tracker is None, "FAILED"
    try:
        if own_tracker:
            from ..tracking import make_tracker
            tracker = make_tracker(cfg, stage=stage, parent_run_id=parent_run_id, label=label,
                                   method=method, rank=dist.rank, extra_tags=extra_tags)
        if tracker.run_id and init_path and "hpt.init_run_id" not in lineage:
            from ..tracking.lineage import checkpoint_lineage
            lineage.update(checkpoint_lineage(init_path))
        tracker.set_tags(lineage)
        limit_cpu_threads(resolve_device(cfg.device), cfg.data.workers)
        result = run_stage(cfg, stage, loader, stage_dir(cfg, stage), tracker=tracker,
                           init=init_path, dist=dist, stop_after=stop_after,
                           should_stop=should_stop)
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
    log.info("stage %s (%s): %d/%d steps in %.0f s, checkpoint %s", stage, result.variant,
             result.steps, result.total_steps, result.seconds, result.checkpoint)
    return result


def run_chain(cfg: ExperimentConfig, stages: Optional[Iterable[str]] = None,
              tracker_factory: Optional[Callable[[str], Tracker]] = None,
              parent_run_id: Optional[str] = None) -> Dict[str, StageResult]:
    """Run stages in order (default: base, source, target as defined), each from the last.

    Without a ``tracker_factory`` every stage gets its own run from ``cfg.tracking``,
    nested under ``parent_run_id``.
    """
    order = list(stages) if stages is not None else [s for s in ("base", "source", "target")
                                                      if s in cfg.stages]
    results: Dict[str, StageResult] = {}
    for stage in order:
        if tracker_factory is None:
            results[stage] = run_configured_stage(cfg, stage, parent_run_id=parent_run_id)
            continue
        tracker = tracker_factory(stage)
        try:
            results[stage] = run_configured_stage(cfg, stage, tracker=tracker)
        finally:
            tracker.close()
    return results
