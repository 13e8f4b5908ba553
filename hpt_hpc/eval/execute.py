"""Running an :class:`EvalPlan`: resolve what is evaluated, run the protocol, and write the
one evaluation record (an MLflow evaluation run and, for sweeps, a JSON result file).
What the evaluation job of every executor and ``hpt-hpc probe``/``finetune`` call."""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import List, Optional, Tuple

from ..config import ExperimentConfig, InitRef, OutputLayout, config_to_dict
from ..config.protocols import PROTOCOLS
from ..device import limit_cpu_threads, resolve_device
from ..errors import HptError
from ..models.resolve import resolve
from ..plan import EvalPlan
from ..plan.record import StageRecord
from ..plan.methods import DEFAULT_SSL  # stages written before ssl was recorded
from ..tracking.registry import safe_name
from ..tracking.runs import open_run
from .lineage import checkpoint_lineage
from .record import PREDICTIONS_ARTIFACTS, EvalRecord, save_predictions, write_record_file
from .resume import Checkpoints, settings_key
from .probe import Trial
from .runner import evaluate_pixels, table_function


def cli_plan(cfg: ExperimentConfig, protocol: str, dataset: str,
             checkpoint: Optional[str]) -> EvalPlan:
    """The plan of ``hpt-hpc probe``/``finetune``: ``checkpoint`` is any reference
    :class:`InitRef` accepts (``None``: a seeded random backbone); method, stage, step
    budget, the evaluated run and where the run logs come from the checkpoint
    (:func:`~hpt_hpc.eval.lineage.checkpoint_lineage`)."""
    ref = InitRef.parse(checkpoint, "--checkpoint").absolute()
    if dataset not in cfg.datasets:
        raise HptError(f"dataset '{dataset}' is not defined in the config (defined: "
                       f"{', '.join(sorted(cfg.datasets)) or 'none'})")
    what = f"{PROTOCOLS[protocol].command} {dataset}"
    lineage = checkpoint_lineage(cfg, ref, who=f"evaluation '{what}'")
    label = lineage.name(what)
    outputs = OutputLayout(Path(cfg.output_dir).resolve())
    layout = outputs.evaluations
    result = outputs.evaluation_result(safe_name(label), time.strftime("%Y%m%d-%H%M%S"))
    return EvalPlan(cfg, protocol, lineage.method, dataset, ref, label,
                    lineage.layout or layout, result, tracking=lineage.tracking,
                    steps=lineage.steps, seed=cfg.seed, evaluates=lineage.evaluates,
                    stage=lineage.stage, along=lineage.along)


def resume_checkpoints(plan: EvalPlan, weights: Optional[str]) -> Checkpoints:
    """Where a requeued evaluation resumes from: beside its result file, keyed by every
    setting the result depends on (the evaluated weights by path, size and time); nothing
    for a plan whose result file is new each time (``hpt-hpc probe``/``finetune``)."""
    if not plan.resumable:
        return Checkpoints(None, "")
    stat = Path(weights).stat() if weights else None
    return Checkpoints(plan.result_file, settings_key(
        plan.protocol, plan.method, plan.dataset, plan.seed, weights,
        (stat.st_size, stat.st_mtime_ns) if stat else None, config_to_dict(plan.config)))


def evaluate_plan(plan: EvalPlan) -> Tuple[EvalRecord, List[Trial]]:
    """Run the plan's protocol (its runner in the protocol table); returns the record, its
    coordinates filled in, and the protocol's trials."""
    cfg = plan.config
    device = resolve_device(cfg.device)
    limit_cpu_threads(device, cfg.data.workers, cfg.compute.threads)
    ref = plan.checkpoint
    if plan.along and not Path(ref.value).is_file():
        raise HptError(f"unit {plan.label}: its pretraining ({plan.evaluates}) kept no "
                       f"checkpoint at step {plan.steps} ({ref.value}): it stopped before, or "
                       f"finished before probe_at listed the step (then move "
                       f"{plan.layout.root} away to train it again). Re-run the sweep")
    if plan.evaluates and ref.kind == "file" and not Path(ref.value).is_file():
        raise HptError(f"unit {plan.label}: its pretraining ({plan.evaluates}) has no final "
                       f"checkpoint at {ref.value}; it failed or was cancelled. Re-run the "
                       f"sweep: finished units are skipped, this one is retried")
    resolved = resolve(ref, plan.layout, plan.tracking.uri if plan.tracking else None,
                           who=f"evaluation '{plan.label}'")
    saved = resume_checkpoints(plan, resolved.path)
    if plan.method == "raw-pixels":
        record, trials = evaluate_pixels(cfg, plan.dataset)
    else:
        run = table_function(PROTOCOLS[plan.protocol].runner)
        record, trials = run(cfg, plan.dataset, resolved.path, device, saved)
    stage = StageRecord.read(plan.layout) if plan.evaluates else None
    record = dataclasses.replace(
        record, method=plan.method, dataset=plan.dataset, steps=plan.steps,
        seed=plan.seed, base_seed=plan.base_seed, augment=plan.augment, images=plan.images,
        checkpoint=ref.text or "none", evaluates=plan.evaluates or "none",
        stage=plan.stage or "none",
        pretrain_seconds=float(stage.seconds) if stage else 0.0,
        probe_labels=plan.probe_labels, queue_size=int(stage.queue_size) if stage else 0,
        pretrain_images=int(stage.images) if stage else 0, label=plan.label,
        along=plan.along,
        ssl=(stage.ssl if stage else "") or (DEFAULT_SSL if plan.evaluates else ""))
    return record, trials


def log_record(plan: EvalPlan, record: EvalRecord,
               predictions: Optional[Path] = None) -> Optional[str]:
    """One FINISHED MLflow evaluation run holding the record (and the ``predictions``
    file as an artifact); returns its id."""
    target = plan.tracking
    if target is None:
        return None
    section = getattr(plan.config, PROTOCOLS[plan.protocol].section)
    tracker = open_run(target.uri, target.experiment, plan.label, "eval",
                       tags={**target.tags(), **plan.tags},
                       parent_run_id=target.parent_run_id, system_metrics=False,
                       flush_seconds=target.flush_seconds)
    status = "FAILED"
    try:
        tracker.log_params({f"{plan.protocol}.{k}": v
                            for k, v in dataclasses.asdict(section).items()})
        record.log(tracker)
        if predictions is not None:
            tracker.log_artifact(str(predictions), PREDICTIONS_ARTIFACTS)
        status = "FINISHED"
    finally:
        tracker.close(status)
    record.run_id = tracker.run_id
    return tracker.run_id


def run_eval_plan(plan: EvalPlan) -> Tuple[EvalRecord, List[Trial]]:
    """Evaluate, log the record to MLflow and to the plan's result file; a NaN score is
    an error (after it was recorded)."""
    record, trials = evaluate_plan(plan)
    saved = save_predictions(record, plan.result_file) if plan.result_file else None
    log_record(plan, record, saved)
    if plan.result_file is not None:
        write_record_file(record, plan.result_file, {"tags": plan.tags})
        Checkpoints(plan.result_file, "").remove()  # nothing is left to resume
    if math.isnan(record.score):
        raise HptError(f"evaluation {plan.label}: the score is NaN")
    return record, trials
