"""The stage record: what a finished (or interrupted) stage reports, in one shape. The
engine fills it, the stage runner writes it as the stage's ``result.json``
(:meth:`StageRecord.write`), a stage job returns it as a dict (:meth:`StageRecord.to_json`,
plain values pickle across versions), and every reader (evaluations, ``hpt-hpc train``, the
quickstart) reads it back with :meth:`StageRecord.read` / :meth:`StageRecord.from_json`.

``result.json`` files written before this record (no ``label``/``rank``/``host`` keys) read
as they are: a missing key takes its default, an unknown key is ignored.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..config.layout import StageLayout
from ..files import write_text_atomic


@dataclass
class StageRecord:
    """One stage's report: its steps, checkpoint, run, init and timings."""

    stage: str
    variant: str
    checkpoint: Path
    steps: int
    total_steps: int
    label: str = ""  # the stage's run label (``<label>`` of the job)
    final_loss: float = math.nan
    skipped_images: int = 0  # unreadable images the stage met: all ranks, across resumes
    resumed_from: Optional[int] = None
    resume_changes: List[str] = field(default_factory=list)  # checkpoint.resume_changes used
    init: Dict[str, Any] = field(default_factory=dict)  # what the init loaded (train.initial)
    init_layout: Optional[str] = None  # the init file's layout (hpt-hpc, moco, ...)
    seconds: float = 0.0
    run_id: Optional[str] = None  # the tracker's run (MLflow run id)
    model_uri: Optional[str] = None  # registry URI of the final checkpoint, when registered
    param_digest: str = ""  # sha256 of the online encoder's parameters (compare ranks/runs)
    step_seconds: float = math.nan  # median step time of this call, first 5 steps skipped
    queue_size: int = 0  # MoCo's effective queue length (capped to what the data fills)
    images: int = 0  # training images of the stage (all ranks)
    saved_step: int = -1  # the step of this call's last periodic checkpoint
    threads: int = 0  # torch intra-op threads the steps ran with (CPU results depend on it)
    ssl: str = ""  # the self-supervised method the stage trained with
    rank: int = 0  # the DDP rank that reports (result.json: rank 0)
    world_size: int = 1
    host: str = ""
    interrupted: bool = False  # stopped by preemption, requeued

    @property
    def completed(self) -> bool:
        return self.steps >= self.total_steps

    def to_json(self) -> Dict[str, Any]:
        data = asdict(self)
        data["checkpoint"] = str(self.checkpoint)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "StageRecord":
        names = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in names})
        record.checkpoint = Path(record.checkpoint)
        return record

    def write(self, layout: StageLayout) -> Path:
        """The stage's ``result.json`` (atomic)."""
        write_text_atomic(layout.result, json.dumps(self.to_json(), indent=1, default=str))
        return layout.result

    @classmethod
    def read(cls, layout: StageLayout) -> Optional["StageRecord"]:
        """The stage's ``result.json``; ``None`` while the stage has not finished once."""
        if not layout.result.is_file():
            return None
        return cls.from_json(json.loads(layout.result.read_text()))
