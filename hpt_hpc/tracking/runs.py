"""Creating and continuing MLflow runs from plain values: experiments, pipeline (parent)
runs, nested stage and evaluation runs, environment tags (git, SLURM, host).

A run is continued when its id is known (a requeued stage passes the id saved in its
checkpoint), so a requeued stage never makes a second run. A pipeline run is recorded in
``<record_dir>/mlflow-pipeline.json`` and reused when the same pipeline runs again.
Which tags a stage or an evaluation carries is decided by the callers (the plan and the
evaluation record); this module adds only the bookkeeping tags ``hpt.kind``,
``hpt.label``, ``hpt.resumes`` and the environment.
"""
from __future__ import annotations

import functools
import getpass
import json
import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional

from .. import __version__
from ..files import write_text_atomic
from .filters import run_filter
from .mlflow_tracker import MlflowTracker
from .registry import safe_name
from .store import UI_KIND_TAG, TrackingError, artifact_root, client_for, reader_for

log = logging.getLogger(__name__)

PIPELINE_RECORD = "mlflow-pipeline.json"
PARENT_ENV = "HPT_MLFLOW_PARENT_RUN_ID"  # a parent run for jobs started outside a launch
CONFIG_ARTIFACT = "config.resolved.yaml"
SLURM_TAGS = {"SLURM_JOB_ID": "slurm.job_id", "SLURM_ARRAY_JOB_ID": "slurm.array_job_id",
              "SLURM_ARRAY_TASK_ID": "slurm.array_task_id", "SLURM_JOB_NAME": "slurm.job_name",
              "SLURM_RESTART_COUNT": "slurm.restart_count", "SLURM_CLUSTER_NAME": "slurm.cluster",
              "SLURM_JOB_PARTITION": "slurm.partition"}


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The experiment ``name`` (created with an explicit artifact location for sqlite
    stores, and tagged so the MLflow UI opens its classic runs view)."""
    from mlflow.exceptions import MlflowException
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


def _existing_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return None
    return run if run.info.lifecycle_stage != "deleted" else None


@dataclass(frozen=True)
class RunPlace:
    """Where a run sits in a store: its experiment (by name), parent run and pipeline."""

    experiment: str
    parent_run_id: Optional[str]
    pipeline: Optional[str]


def run_place(uri: str, run_id: str) -> Optional[RunPlace]:
    """Where run ``run_id`` sits in the store ``uri`` (``None``: not there, or deleted),
    so that a later run can be filed beside it: its parent, else (a run started outside
    its pipeline, e.g. by hand) the newest pipeline run of its ``hpt.pipeline``."""
    client = client_for(uri)
    run = _existing_run(client, run_id)
    if run is None:
        return None
    tags = run.data.tags
    parent, pipeline = tags.get("mlflow.parentRunId"), tags.get("hpt.pipeline")
    if parent is None and pipeline:
        runs = client.search_runs([run.info.experiment_id],
                                  run_filter({"hpt.kind": "pipeline", "hpt.pipeline": pipeline}),
                                  order_by=["attributes.start_time DESC"],
                                  max_results=1)
        parent = runs[0].info.run_id if runs else None
    return RunPlace(client.get_experiment(run.info.experiment_id).name, parent, pipeline)


def _write_config(config: Mapping[str, Any], folder: Path) -> Path:
    import yaml
    # concurrent array tasks share the folder: each writes its own temporary file
    return write_text_atomic(folder / CONFIG_ARTIFACT, yaml.safe_dump(dict(config),
                                                                      sort_keys=False))


def open_run(uri: str, experiment: str, label: str, kind: str, *,
             tags: Optional[Mapping[str, str]] = None, parent_run_id: Optional[str] = None,
             run_id: Optional[str] = None, model_name: Optional[str] = None,
             alias: Optional[str] = None, folder: Optional[os.PathLike] = None,
             config: Optional[Mapping[str, Any]] = None, flush_seconds: float = 10.0,
             system_metrics: bool = True) -> MlflowTracker:
    """A tracker on a run of ``experiment``: ``run_id`` continued when it exists (status
    back to RUNNING, ``hpt.resumes`` + 1, original parent kept), else a new run named
    ``label`` nested under ``parent_run_id`` (default: env ``HPT_MLFLOW_PARENT_RUN_ID``).

    ``model_name``/``alias``: where logged checkpoints are registered. ``folder``: where
    undeliverable data is spilled and ``config`` (a plain dict) is written as the artifact
    ``config.resolved.yaml``.
    """
    client = client_for(uri)
    parent_run_id = parent_run_id or os.environ.get(PARENT_ENV) or None
    run = _existing_run(client, run_id) if run_id else None
    if run_id and run is None:
        log.warning("tracking: run %s (saved in the checkpoint) is not in %s; starting a new "
                    "run", run_id, uri)
    if parent_run_id and _existing_run(client, parent_run_id) is None:
        raise TrackingError(f"pipeline run {parent_run_id} (the parent of this run) is "
                            f"not in {uri}")
    all_tags = {"hpt.kind": kind, "hpt.label": label, **environment_tags(), **(tags or {})}
    if run is None:
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id(client, experiment, uri), run_name=label,
                                tags=all_tags)
        known_params, known_tags = {}, all_tags
    else:
        client.update_run(run.info.run_id, status="RUNNING")
        all_tags["hpt.resumes"] = str(int(run.data.tags.get("hpt.resumes", "0")) + 1)
        known_params, known_tags = run.data.params, run.data.tags
        log.info("tracking: continuing run %s (%s)", run.info.run_id, label)
    tracker = MlflowTracker(client, run.info.run_id, tracking_uri=uri, model_name=model_name,
                            alias=alias, spill_dir=folder, flush_seconds=flush_seconds,
                            system_metrics=system_metrics, known_params=known_params,
                            known_tags=known_tags)
    tracker.set_tags(all_tags)
    if config is not None and folder is not None:
        tracker.log_artifact(str(_write_config(config, Path(folder))))
    return tracker


def start_pipeline_run(uri: str, experiment: str, name: str, record_dir: os.PathLike,
                       config: Optional[Mapping[str, Any]] = None,
                       run_id: Optional[str] = None, new: bool = False) -> str:
    """The parent run of a pipeline, launch or sweep named ``name``; returns its id.

    Reuses ``run_id``, else the run recorded in ``<record_dir>/mlflow-pipeline.json`` for
    the same name and store (unless ``new``), so a re-run pipeline keeps one parent.
    """
    client = client_for(uri)
    record_dir = Path(record_dir).resolve()
    record = record_dir / PIPELINE_RECORD
    if run_id is None and not new and record.is_file():
        try:
            data = json.loads(record.read_text())
        except (OSError, ValueError):
            log.warning("tracking: %s is unreadable; starting a new pipeline run", record)
            data = {}
        if isinstance(data, dict) and data.get("name") == name and \
                data.get("tracking_uri") == uri:
            run_id = data.get("run_id")
    run = _existing_run(client, run_id) if run_id else None
    if run is not None:
        client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    exp_id = experiment_id(client, experiment, uri)
    _refuse_namesake(client, exp_id, name, record_dir)
    tags = {"hpt.pipeline": name, "hpt.kind": "pipeline", "hpt.label": name,
            "hpt.output_dir": str(record_dir), **environment_tags()}
    run = client.create_run(exp_id, run_name=name, tags=tags)
    if config is not None:
        client.log_artifact(run.info.run_id, str(_write_config(config, record_dir)))
    write_text_atomic(record, json.dumps({"name": name, "run_id": run.info.run_id,
                                          "tracking_uri": uri}))
    return run.info.run_id


def _refuse_namesake(client: Any, exp_id: str, name: str, record_dir: Path) -> None:
    """Registry aliases are ``<pipeline>-<label>``: a second pipeline of the same name in
    the same store (another output folder) would move the first one's aliases."""
    runs = client.search_runs([exp_id], run_filter({"hpt.kind": "pipeline",
                                                    "hpt.pipeline": name}), max_results=20)
    others = {r.data.tags.get("hpt.output_dir") for r in runs} - {str(record_dir), None}
    if others:
        raise TrackingError(f"a pipeline named '{name}' already logs to this store from "
                            f"{sorted(others)[0]}; its checkpoint aliases ({name}-<stage>) "
                            f"would be moved. Give this config another name, or use that "
                            f"output_dir")


def end_pipeline_run(uri: str, run_id: Optional[str], status: str = "FINISHED",
                     artifacts: Iterable[os.PathLike] = (),
                     open_children: Optional[str] = None) -> None:
    """Attach ``artifacts`` (result tables, plots) to the pipeline run and end it.
    ``open_children``: the status for its nested runs still RUNNING (their job ended
    without ending them: cancelled or killed)."""
    if not run_id:
        return
    client = client_for(uri)
    for path in artifacts:
        client.log_artifact(run_id, str(path))
    if open_children:
        experiment = client.get_run(run_id).info.experiment_id
        for child in client.search_runs([experiment], run_filter(
                {"mlflow.parentRunId": run_id}, status="RUNNING"), max_results=5000):
            client.set_terminated(child.info.run_id, open_children)
    client.set_terminated(run_id, status)


def search_all(uri: str, experiment: str, query: str) -> Optional[List[Any]]:
    """Every run of ``experiment`` matching ``query`` (``None``: no such experiment;
    :class:`~.store.StoreMissing`: no store)."""
    client = reader_for(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return None
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], query, max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs
