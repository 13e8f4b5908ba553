"""Resuming a requeued evaluation job (a SLURM time limit, a preemption, a crash): the
extracted features of cached/kNN probes, and the state of the augmented probe and of
fine-tuning at their last validation point (head, backbone, optimiser, schedule, best
result so far, RNG), saved atomically beside the evaluation's result file and removed once
the record is written. A state written for other settings is ignored (a key of the plan's
settings is stored with it)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Dict, Optional


from ..models.weights import CheckpointReadError, load_checkpoint, save_checkpoint_atomic

log = logging.getLogger(__name__)


def settings_key(*parts: Any) -> str:
    """A digest of everything an evaluation's result depends on (JSON-serialisable)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class EvalState:
    """One resumable piece of an evaluation (``path`` None: nothing is saved)."""

    def __init__(self, path: Optional[Path], key: str):
        self.path, self.key = (Path(path) if path else None), key

    def load(self) -> Optional[Dict[str, Any]]:
        """The saved state, or None (none yet, unreadable, or written for other settings)."""
        if self.path is None or not self.path.is_file():
            return None
        try:
            state = load_checkpoint(str(self.path))
        except (CheckpointReadError, OSError) as exc:
            log.warning("ignoring unreadable evaluation state %s: %s", self.path, exc)
            return None
        if not isinstance(state, dict) or state.get("key") != self.key:
            log.warning("ignoring evaluation state %s: written for other settings", self.path)
            return None
        log.info("resuming evaluation from %s", self.path)
        return state

    def save(self, state: Dict[str, Any]) -> None:
        if self.path is not None:
            save_checkpoint_atomic({**state, "key": self.key}, str(self.path))

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


class Checkpoints:
    """The resumable pieces of one evaluation plan, beside its result file: the extracted
    ``features`` and, per seed, the training ``schedule`` (None: nothing is saved)."""

    def __init__(self, result_file: Optional[Path], key: str):
        self.stem, self.key = (Path(result_file) if result_file else None), key
        self.features = EvalState(self._path("features"), key)

    def _path(self, what: str) -> Optional[Path]:
        return self.stem.with_suffix(f".{what}.pt") if self.stem else None

    def schedule(self, seed: int) -> EvalState:
        return EvalState(self._path(f"resume-seed{seed}"), self.key)

    def remove(self) -> None:
        """Drop every saved piece (the record is written: nothing is left to resume)."""
        if self.stem is not None:
            for path in self.stem.parent.glob(f"{self.stem.stem}.*.pt"):
                path.unlink(missing_ok=True)


NONE = Checkpoints(None, "")
