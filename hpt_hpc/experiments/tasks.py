"""What a sweep's evaluation tasks run: one protocol on one checkpoint, logged to MLflow.

Pretraining tasks are :class:`hpt_hpc.launch.job.StageJob` (preemptible, resumable);
evaluation tasks are :class:`EvalJob`. Each evaluation becomes one MLflow run tagged with
``hpt.sweep``/``hpt.unit``; a FINISHED run is what makes a re-run sweep skip the unit.
"""
from __future__ import annotations

import logging
import math
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import HptError

log = logging.getLogger(__name__)


def _mean_curve(curves: List[List[Any]]) -> List[tuple]:
    """Step-wise mean of several ``(step, val, test)`` curves (same steps)."""
    if not curves:
        return []
    rows = []
    for points in zip(*curves):
        rows.append((int(points[0][0]), statistics.fmean(p[1] for p in points),
                     statistics.fmean(p[2] for p in points)))
    return rows


def evaluation_metrics(protocol: str, outcome: Any) -> Dict[str, Any]:
    """Flat metrics of a linear summary or fine-tune result (what the report reads)."""
    if protocol == "linear":
        results = outcome.results
        return {"score": outcome.mean, "score_std": outcome.std,
                "val": statistics.fmean(r.best_val for r in results),
                "best_step": statistics.fmean(r.best_step for r in results),
                "repeats": len(results), "metric": outcome.metric, "mode": outcome.mode,
                "per_repeat": [r.test_at_best_val for r in results],
                "curve": _mean_curve([r.curve for r in results])}
    return {"score": outcome.test_at_best_val, "score_std": 0.0, "val": outcome.best_val,
            "best_step": outcome.best_step, "repeats": 1, "metric": "top1",
            "mode": f"finetune ({outcome.labels} labels)", "per_repeat": [outcome.test_at_best_val],
            "curve": list(outcome.curve)}


def run_evaluation(cfg: Any, unit: Dict[str, Any], checkpoint: Optional[str]) -> Dict[str, Any]:
    """Run the unit's protocol; ``checkpoint`` None means random init (or raw pixels)."""
    from ..eval.runner import evaluate_finetune, evaluate_linear, evaluate_pixels
    from ..train.state import limit_cpu_threads, resolve_device
    device = resolve_device(cfg.device)
    limit_cpu_threads(device, cfg.data.workers)
    dataset = unit["dataset"]
    if unit["method"] == "raw-pixels":
        return evaluation_metrics("linear", evaluate_pixels(cfg, dataset))
    if unit["protocol"] == "finetune":
        return evaluation_metrics("finetune", evaluate_finetune(cfg, dataset, checkpoint, device))
    return evaluation_metrics("linear", evaluate_linear(cfg, dataset, checkpoint, device))


def log_unit(cfg: Any, parent_run_id: Optional[str], unit: Dict[str, Any],
             tags: Dict[str, str], metrics: Dict[str, Any], checkpoint: Optional[str]) -> None:
    """One FINISHED MLflow eval run per unit: score, std, per-repeat scores and curve."""
    from ..tracking import make_tracker
    tracker = make_tracker(cfg, None, parent_run_id, label=unit["unit_id"],
                           method=unit["method"], dataset=unit["dataset"], kind="eval",
                           system_metrics=False,
                           extra_tags={**tags, "hpt.eval_mode": metrics["mode"],
                                       "hpt.metric": metrics["metric"],
                                       "hpt.checkpoint": checkpoint or "none"})
    status = "FAILED"
    try:
        section = cfg.probe if unit["protocol"] == "linear" else cfg.finetune
        tracker.log_params({f"{unit['protocol']}.{k}": v
                            for k, v in vars(section).items()})
        tracker.log_metrics({"score": metrics["score"], "score_std": metrics["score_std"],
                             "val_score": metrics["val"], "best_step": metrics["best_step"],
                             "repeats": metrics["repeats"]}, step=0)
        for i, value in enumerate(metrics["per_repeat"]):
            tracker.log_metrics({"score_repeat": value}, step=i)
        for step, val, test in metrics["curve"]:
            tracker.log_metrics({"curve_val": val, "curve_test": test}, step=int(step))
        status = "FINISHED"
    finally:
        tracker.close(status)


def _write_result(path: Path, data: Dict[str, Any]) -> None:
    """The unit's result on disk too (atomic), for runs with tracking off."""
    import json
    import os
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


class EvalJob:
    """The submitted evaluation callable: ``EvalJob()(config, unit, parent_run_id, tags)``."""

    def __call__(self, config: Dict[str, Any], unit: Dict[str, Any],
                 parent_run_id: Optional[str], tags: Dict[str, str]) -> Dict[str, Any]:
        from ..config import config_from_dict
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        cfg = config_from_dict(config)
        checkpoint = None
        if unit.get("pretrain"):
            path = Path(cfg.output_dir) / "target" / "checkpoints" / "final.pt"
            if not path.is_file():
                raise HptError(f"unit {unit['unit_id']}: its pretraining "
                               f"({unit['pretrain']}) has no final checkpoint at {path}; it "
                               f"failed or was cancelled. Re-run the sweep: finished units "
                               f"are skipped, this one is retried")
            checkpoint = str(path)
        metrics = run_evaluation(cfg, unit, checkpoint)
        log_unit(cfg, parent_run_id, unit, tags, metrics, checkpoint)
        _write_result(Path(cfg.output_dir) / "results" / f"{unit['unit_id']}.json",
                      {"unit": unit, "tags": tags, **metrics})
        score = metrics["score"]
        log.info("%s: %s %.4f +- %.4f (%s)", unit["unit_id"], metrics["metric"], score,
                 metrics["score_std"], metrics["mode"])
        if math.isnan(score):
            raise HptError(f"unit {unit['unit_id']}: the evaluation produced NaN")
        return {"unit": unit["unit_id"], "score": score, "std": metrics["score_std"],
                "mode": metrics["mode"]}
