"""The tracker interface the stage engine and evaluations log through.

:class:`NullTracker` records nothing and is the default; the MLflow tracker implements the
same methods. Keeping the engine on this small interface lets tracking plug in unchanged.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional


class Tracker:
    """Base tracker: every method is a no-op. Subclasses override what they record."""

    run_id: Optional[str] = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record configuration values (flattened ``a.b`` keys)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record metric values at a training step (may be buffered)."""

    def set_tags(self, tags: Mapping[str, str]) -> None:
        """Attach searchable tags to the current run."""

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        """Store a file with the run."""

    def log_checkpoint(self, path: str, kind: str = "final") -> Optional[str]:
        """Store a checkpoint; return a URI the next stage can start from, if any."""
        return None

    def flush(self) -> None:
        """Write buffered metrics out."""

    def close(self, status: str = "FINISHED") -> None:
        """Flush and end the run."""
        self.flush()

    def summary(self) -> Dict[str, Any]:
        return {}


class NullTracker(Tracker):
    """Records nothing (local debug runs and unit tests)."""


class MemoryTracker(Tracker):
    """Keeps everything in memory: handy for tests and for printing a run's summary."""

    def __init__(self) -> None:
        self.params: Dict[str, Any] = {}
        self.metrics: Dict[str, list] = {}
        self.tags: Dict[str, str] = {}
        self.artifacts: list = []

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, float(value)))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self.artifacts.append((path, artifact_path))

    def log_checkpoint(self, path: str, kind: str = "final") -> Optional[str]:
        self.artifacts.append((path, f"checkpoints/{kind}"))
        return None
