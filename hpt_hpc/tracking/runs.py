"""Creating and continuing MLflow runs: experiments, pipeline (parent) runs, stage and
evaluation (nested) runs, environment tags (git, SLURM, host) and requeue continuity.

A stage run's id is saved in every checkpoint (``tracker_run_id``); :func:`make_tracker`
reads it from ``<stage_dir>/checkpoints/last.pt`` and continues that run, so a requeued
stage never makes a second run. A pipeline run is recorded in
``<output_dir>/mlflow-pipeline.json`` and reused when the same pipeline runs again.
"""
from __future__ import annotations

import dataclasses
import functools
import getpass
import json
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional

from .base import NullTracker, Tracker
from .lineage import alias_for, checkpoint_run_id, model_name_for, safe_name
from .store import (UI_KIND_TAG, TrackingError, artifact_root, check_reachable, ensure_store,
                    is_server_uri, resolve_tracking_uri)

log = logging.getLogger(__name__)

METHODS = {"full": "HPT", "bn": "HPT-BN", "bn-stats": "Base", "scratch": "Target"}
PIPELINE_RECORD = "mlflow-pipeline.json"
PARENT_ENV = "HPT_MLFLOW_PARENT_RUN_ID"  # the launcher passes the pipeline run to its jobs
SLURM_TAGS = {"SLURM_JOB_ID": "slurm.job_id", "SLURM_ARRAY_JOB_ID": "slurm.array_job_id",
              "SLURM_ARRAY_TASK_ID": "slurm.array_task_id", "SLURM_JOB_NAME": "slurm.job_name",
              "SLURM_RESTART_COUNT": "slurm.restart_count", "SLURM_CLUSTER_NAME": "slurm.cluster",
              "SLURM_JOB_PARTITION": "slurm.partition"}


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri`` (sqlite schema created once; servers checked)."""
    from mlflow import MlflowClient
    if is_server_uri(uri):
        # Keep one failed request short (MLflow's default retries for minutes): the tracker
        # retries on its own schedule without blocking training.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        check_reachable(uri)
    else:
        ensure_store(uri)
    return MlflowClient(uri, uri)


def experiment_id(client: Any, cfg: Any, uri: str) -> str:
    """The config's experiment (created with an explicit artifact location for sqlite
    stores, and tagged so the MLflow UI opens its classic runs view)."""
    from mlflow.exceptions import MlflowException
    name = cfg.tracking.experiment or cfg.name
    exp = client.get_experiment_by_name(name)
    if exp is None:
        root = artifact_root(uri)
        try:
            return client.create_experiment(
                name, artifact_location=str(Path(root) / safe_name(name)) if root else None,
                tags={UI_KIND_TAG[0]: UI_KIND_TAG[1]})
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            exp = client.get_experiment_by_name(name)
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"experiment '{name}' is deleted in {uri}: restore it "
                            f"(`mlflow experiments restore -x {exp.experiment_id}`) or set "
                            f"tracking.experiment to another name")
    if exp.tags.get(UI_KIND_TAG[0]) != UI_KIND_TAG[1]:
        client.set_experiment_tag(exp.experiment_id, *UI_KIND_TAG)
    return exp.experiment_id


@functools.lru_cache(maxsize=None)
def git_commit() -> Optional[str]:
    """HEAD of the working directory's repository, else of this package's checkout."""
    for where in (os.getcwd(), str(Path(__file__).resolve().parents[2])):
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                 text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def environment_tags() -> Dict[str, str]:
    """Who, where and what code: user, host, git commit, SLURM job/array ids."""
    from .. import __version__
    tags = {"mlflow.source.name": "hpt-hpc", "mlflow.source.type": "JOB",
            "hpt.host": socket.gethostname(), "hpt.version": __version__}
    try:
        tags["mlflow.user"] = getpass.getuser()
    except (KeyError, OSError):
        pass
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = tags["hpt.git_commit"] = commit
    tags.update({tag: os.environ[var] for var, tag in SLURM_TAGS.items() if var in os.environ})
    return tags


def saved_run_id(stage_dir: os.PathLike) -> Optional[str]:
    """The run id stored in ``<stage_dir>/checkpoints/last.pt`` (``None``: no checkpoint)."""
    path = Path(stage_dir) / "checkpoints" / "last.pt"
    return checkpoint_run_id(str(path)) if path.is_file() else None


def _existing_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage != "deleted" else None


def _write_config(cfg: Any, folder: Path) -> Path:
    import yaml
    from ..config import config_to_dict
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.resolved.yaml"
    tmp = folder / f".config.{os.getpid()}.tmp"  # concurrent array tasks share the folder
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
    return path


def make_tracker(cfg: Any, stage: Optional[str] = None, parent_run_id: Optional[str] = None,
                 run_id: Optional[str] = None, *, label: Optional[str] = None,
                 method: Optional[str] = None, dataset: Optional[str] = None,
                 kind: Optional[str] = None, pipeline: Optional[str] = None, rank: int = 0,
                 system_metrics: Optional[bool] = None,
                 extra_tags: Optional[Mapping[str, str]] = None) -> Tracker:
    """A tracker for one stage (``stage``) or evaluation (``stage=None``) of ``cfg``.

    ``NullTracker`` when tracking is off or on ranks other than 0. The run continues
    ``run_id`` when given, else the run saved in the stage's ``last.pt``, else is new,
    nested under ``parent_run_id`` (default: env ``HPT_MLFLOW_PARENT_RUN_ID``). Stage runs
    register their final checkpoint under alias ``<pipeline>-<label>`` (label: stage).
    """
    from .mlflow_tracker import MlflowTracker
    if not cfg.tracking.enabled or rank != 0:
        return NullTracker()
    uri = resolve_tracking_uri(cfg)
    client = client_for(uri)
    out_dir = Path(cfg.output_dir).resolve()
    folder = out_dir / stage if stage else out_dir
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    run_id = run_id or (saved_run_id(folder) if stage else None)
    run = _existing_run(client, run_id) if run_id else None
    if run_id and run is None:
        log.warning("tracking: run %s (saved in the checkpoint) is not in %s; starting a new "
                    "run", run_id, uri)
    if pipeline is None and parent_run_id:
        parent = _existing_run(client, parent_run_id)
        if parent is None:
            raise TrackingError(f"pipeline run {parent_run_id} (the parent of this run) is "
                                f"not in {uri}")
        pipeline = parent.data.tags.get("hpt.pipeline")
    pipeline = pipeline or cfg.name
    label = label or stage or "evaluation"
    st = cfg.stages.get(stage) if stage else None
    tags = {"hpt.pipeline": pipeline, "hpt.kind": kind or ("stage" if stage else "eval"),
            "hpt.label": label, **environment_tags()}
    tags.update({k: v for k, v in (("hpt.stage", stage),
                                   ("hpt.method", method or (METHODS.get(st.variant) if st else None)),
                                   ("hpt.dataset", dataset or (st.dataset if st else None))) if v})
    tags.update(extra_tags or {})
    if run is None:
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id(client, cfg, uri), run_name=label, tags=tags)
        known_params, known_tags = {}, tags
    else:  # requeued or re-run stage: same run, original parent kept
        client.update_run(run.info.run_id, status="RUNNING")
        tags["hpt.resumes"] = str(int(run.data.tags.get("hpt.resumes", "0")) + 1)
        known_params, known_tags = run.data.params, run.data.tags
        log.info("tracking: continuing run %s (%s)", run.info.run_id, label)
    tracker = MlflowTracker(
        client, run.info.run_id, tracking_uri=uri,
        model_name=model_name_for(cfg) if stage else None, alias=alias_for(pipeline, label),
        spill_dir=folder, flush_seconds=cfg.tracking.flush_seconds,
        system_metrics=cfg.tracking.system_metrics if system_metrics is None else system_metrics,
        known_params=known_params, known_tags=known_tags)
    tracker.set_tags(tags)
    tracker.log_artifact(str(_write_config(cfg, folder)))
    return tracker


def start_pipeline_run(cfg: Any, name: Optional[str] = None, run_id: Optional[str] = None,
                       new: bool = False) -> Optional[str]:
    """The parent run of a pipeline or launch; returns its id (``None``: tracking off).

    Reuses ``run_id``, else the run recorded in ``<output_dir>/mlflow-pipeline.json`` for
    the same name and store (unless ``new``), so a re-run pipeline keeps one parent.
    """
    if not cfg.tracking.enabled:
        return None
    uri = resolve_tracking_uri(cfg)
    client = client_for(uri)
    name = name or cfg.name
    out_dir = Path(cfg.output_dir).resolve()
    record = out_dir / PIPELINE_RECORD
    if run_id is None and not new and record.is_file():
        data = json.loads(record.read_text())
        if data.get("name") == name and data.get("tracking_uri") == uri:
            run_id = data.get("run_id")
    run = _existing_run(client, run_id) if run_id else None
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    tags = {"hpt.pipeline": name, "hpt.kind": "pipeline", "hpt.label": name,
            **environment_tags()}
    run = client.create_run(experiment_id(client, cfg, uri), run_name=name, tags=tags)
    client.log_artifact(run.info.run_id, str(_write_config(cfg, out_dir)))
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"name": name, "run_id": run.info.run_id,
                                  "tracking_uri": uri}))
    return run.info.run_id


def end_pipeline_run(cfg: Any, run_id: Optional[str], status: str = "FINISHED",
                     artifacts: Iterable[os.PathLike] = ()) -> None:
    """Attach ``artifacts`` (result tables, plots) to the pipeline run and end it."""
    if not run_id or not cfg.tracking.enabled:
        return
    client = client_for(resolve_tracking_uri(cfg))
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status)


def log_evaluation(cfg: Any, parent_run_id: Optional[str], label: str, result: Any, *,
                   method: str, dataset: str, checkpoint: Optional[str] = None,
                   metric: str = "acc", extra_tags: Optional[Mapping[str, str]] = None,
                   ) -> Optional[str]:
    """One nested evaluation run for a probe result (replacing an earlier run of the same
    label under the same parent): test/val score at the best val step and the curve."""
    if not cfg.tracking.enabled:
        return None
    if parent_run_id:
        client = client_for(resolve_tracking_uri(cfg))
        parent = client.get_run(parent_run_id)
        for old in client.search_runs(
                [parent.info.experiment_id],
                f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`hpt.label` = "
                f"'{label}' and tags.`hpt.kind` = 'eval'"):
            client.delete_run(old.info.run_id)
    tags = {"hpt.checkpoint": checkpoint or "none", **(extra_tags or {})}
    tracker = make_tracker(cfg, None, parent_run_id, label=label, method=method,
                           dataset=dataset, kind="eval", system_metrics=False, extra_tags=tags)
    tracker.log_params({f"probe.{k}": v for k, v in dataclasses.asdict(cfg.probe).items()})
    tracker.log_params({"probe.dataset": dataset, "probe.checkpoint": checkpoint or "none"})
    best = int(getattr(result, "best_step", 0))
    tracker.log_metrics({f"probe_test_{metric}": result.test_at_best_val,
                         f"probe_val_{metric}": result.best_val, "probe_best_step": best},
                        step=best)
    for step, val, test in getattr(result, "curve", []):
        tracker.log_metrics({f"probe_val_{metric}_curve": val,
                             f"probe_test_{metric}_curve": test}, step=int(step))
    tracker.close()
    return tracker.run_id
