"""Experiment tracking on MLflow, from plain values (URIs, names, tags, params, files):
the :class:`Tracker` interface, the buffered MLflow tracker, stores, runs, the model
registry and a lean server. Nothing here knows configs, stages or evaluations.

Importing this package is cheap; MLflow is imported by the functions that need it.
"""
from importlib import import_module

from .base import MemoryTracker, NullTracker, Tracker

_LAZY = {
    "MlflowTracker": "mlflow_tracker", "sync_pending": "mlflow_tracker",
    "open_run": "runs", "start_pipeline_run": "runs", "end_pipeline_run": "runs",
    "environment_tags": "runs", "search_all": "runs", "PARENT_ENV": "runs",
    "TrackingError": "store", "ensure_store": "store", "check_reachable": "store",
    "requires_server": "store", "prepare_store": "store", "resolve_uri": "store",
    "client_for": "store", "filesystem_type": "store", "server_advice": "store",
    "MAX_SQLITE_WRITERS": "store",
    "InitNotFound": "registry", "fetch_checkpoint": "registry", "alias_for": "registry",
    "model_uri": "registry", "safe_name": "registry",
    "start_server": "server", "ServerHandle": "server",
}

__all__ = ["MemoryTracker", "NullTracker", "Tracker", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
