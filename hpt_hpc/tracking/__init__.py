"""Experiment tracking on MLflow, from plain values (URIs, names, tags, params, files):
the :class:`Tracker` interface, the buffered MLflow tracker, stores, runs, the model
registry and a lean server. Nothing here knows configs, stages or evaluations.

Importing this package is cheap; MLflow is imported by the functions that need it.
"""
import os
from importlib import import_module

# No internet at run time: MLflow's usage telemetry (a thread started at `import mlflow`)
# is off unless a user turns it on; its failure path also pops a variable from os.environ
# while our flush threads read it (seen as KeyError '_MLFLOW_TELEMETRY_SESSION_ID').
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from .base import MemoryTracker, NullTracker, Tracker

_LAZY = {
    "MlflowTracker": "mlflow_tracker", "sync_pending": "mlflow_tracker",
    "open_run": "runs", "start_pipeline_run": "runs", "end_pipeline_run": "runs",
    "environment_tags": "runs", "search_all": "runs", "PARENT_ENV": "runs",
    "TrackingError": "store", "ensure_store": "store", "check_reachable": "store",
    "requires_server": "store", "prepare_store": "store", "resolve_uri": "store",
    "client_for": "store", "reader_for": "store", "StoreMissing": "store",
    "filesystem_type": "store", "server_advice": "store",
    "MAX_SQLITE_WRITERS": "store",
    "InitNotFound": "registry", "fetch_checkpoint": "registry", "alias_for": "registry",
    "registered_uri": "registry", "safe_name": "registry",
    "start_server": "server", "ServerHandle": "server",
}

__all__ = ["MemoryTracker", "NullTracker", "Tracker", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
