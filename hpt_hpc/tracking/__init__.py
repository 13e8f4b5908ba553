"""Experiment tracking: the :class:`Tracker` interface and its MLflow implementation.

Importing this package is cheap; MLflow is imported by the functions that need it.

Launcher API::

    uri = prepare_tracking(cfg, num_tasks=8)          # refuse unsafe sqlite, fail fast, schema once
    parent = start_pipeline_run(cfg, "my-launch")     # parent run; pass it to jobs as
                                                      # env HPT_MLFLOW_PARENT_RUN_ID
    tracker = make_tracker(cfg, stage="target", parent_run_id=parent)  # continues a requeued run
    init = stage_model_uri(cfg, "my-launch", "base")  # models:/<name>@my-launch-base
"""
from importlib import import_module

from .base import MemoryTracker, NullTracker, Tracker

_LAZY = {
    "MlflowTracker": "mlflow_tracker", "sync_pending": "mlflow_tracker",
    "make_tracker": "runs", "start_pipeline_run": "runs", "end_pipeline_run": "runs",
    "log_evaluation": "runs", "saved_run_id": "runs", "environment_tags": "runs",
    "PARENT_ENV": "runs", "METHODS": "runs",
    "TrackingError": "store", "ensure_store": "store", "check_reachable": "store",
    "requires_server": "store", "prepare_tracking": "store", "resolve_tracking_uri": "store",
    "filesystem_type": "store", "server_advice": "store", "MAX_SQLITE_WRITERS": "store",
    "InitNotFound": "lineage", "fetch_init": "lineage", "stage_model_uri": "lineage",
    "model_name_for": "lineage", "alias_for": "lineage", "checkpoint_lineage": "lineage",
    "start_server": "server", "ServerHandle": "server",
    "pipeline_rows": "compare", "format_table": "compare",
}

__all__ = ["MemoryTracker", "NullTracker", "Tracker", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
