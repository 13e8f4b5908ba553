"""Launch records: what was submitted where, so ``status`` and ``cancel`` work later."""
from __future__ import annotations

import json
import time
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config import OutputLayout, StageLayout
from ..config.schema import STAGE_NAMES
from ..errors import HptError, WorkFailed
from ..files import write_text_atomic
from ..progress import read_status
from .executors import executor_named
from .states import is_active  # noqa: F401 - status and the closer read it from here

LATEST = OutputLayout(Path(".")).latest_launch.name


@dataclass
class JobEntry:
    stage: str
    job_id: str
    cell: str = "default"
    depends_on: List[str] = field(default_factory=list)
    output_dir: str = ""
    stdout: str = ""
    stderr: str = ""
    tasks: int = 1  # SLURM tasks (DDP ranks) of the job


@dataclass
class LaunchRecord:
    """A JSON file under ``<output_dir>/launches/`` (``latest.json`` is the newest)."""

    created: str
    executor: str
    config: str
    stages: List[str]
    log_folder: str
    output_dir: str
    jobs: List[JobEntry] = field(default_factory=list)
    path: str = ""
    tracking_uri: str = ""  # the MLflow store every job of this launch logs to
    pipeline_run_id: str = ""  # the launch's parent MLflow run
    closer_job_id: str = ""  # the job that ends the pipeline run after the others (close.py)
    # submitit job objects of this process's own submission (not saved): a local job can
    # only be waited on through the object that started it.
    live: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def new(cls, output_dir: Path, executor: str, config: str, stages: List[str],
            log_folder: str) -> "LaunchRecord":
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = OutputLayout(Path(output_dir)).launches / f"{stamp}-{'-'.join(stages)}.json"
        return cls(stamp, executor, str(Path(config).resolve()), stages, log_folder,
                   str(output_dir), path=str(path))

    def add_job(self, stage: str, plan: Any, job: Any, after: List[str], tasks: int) -> None:
        """A submitted job of ``plan`` (its handle kept in ``live``)."""
        self.live[str(job.job_id)] = job
        paths = getattr(job, "paths", None)
        self.jobs.append(JobEntry(stage=stage, job_id=str(job.job_id), cell=plan.label,
                                  depends_on=list(after),
                                  output_dir=str(Path(plan.config.output_dir).resolve()),
                                  stdout=str(paths.stdout) if paths else "",
                                  stderr=str(paths.stderr) if paths else "", tasks=tasks))

    def save(self) -> Path:
        path = Path(self.path)  # its folder: made by write_text_atomic
        data = asdict(self)
        data.pop("live")
        text = json.dumps(data, indent=2)
        for target in (path, path.parent / LATEST):
            write_text_atomic(target, text)
        return path

    @classmethod
    def load(cls, path: Path) -> "LaunchRecord":
        path = Path(path)
        if path.is_dir():
            layout = OutputLayout(path)
            path = layout.latest_launch if layout.launches.is_dir() else path / LATEST
        if not path.is_file():
            raise HptError(f"no launch record at {path}; pass the record file or the "
                           f"experiment's output_dir")
        try:
            data = _typed(cls, json.loads(path.read_text()), "the record")
            jobs = [JobEntry(**_typed(JobEntry, j, f"jobs[{i}]"))
                    for i, j in enumerate(data.pop("jobs", []))]
            return cls(**{**data, "jobs": jobs})
        except (ValueError, TypeError) as exc:
            raise HptError(f"launch record {path} is unreadable ({exc}); pass an earlier "
                           f"record from {path.parent}") from None

    def job(self, entry: JobEntry):
        """The submitit job object for an entry, for its result and logs (its state:
        :func:`job_states`)."""
        if entry.job_id in self.live:
            return self.live[entry.job_id]
        return executor_named(self.executor).job(self.log_folder, entry.job_id, entry.tasks)


def _typed(cls: type, data: Any, where: str) -> Dict[str, Any]:
    """``data`` (read from JSON) as the fields of ``cls``, each of its declared type
    (``TypeError`` naming the first that is not: a record edited or damaged by hand)."""
    if not isinstance(data, dict):
        raise TypeError(f"{where} is {type(data).__name__}, not an object")
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        tp = hints.get(key) if key != "live" else None
        if tp is None:
            raise TypeError(f"{where} has an unknown field {key!r}")
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        ok = (isinstance(value, list) and (inner is JobEntry or all(
            isinstance(v, inner) for v in value))) if inner is not None \
            else isinstance(value, tp) and not isinstance(value, bool)
        if not ok:
            raise TypeError(f"{where}: {key} is {json.dumps(value)}, not "
                            f"{getattr(tp, '__name__', str(tp))}")
    return data


def job_states(record: LaunchRecord) -> List[Dict[str, Any]]:
    """Stage, cell, job id, scheduler state (:mod:`hpt_hpc.launch.states`) and the latest
    progress figures (step, total, percent, ETA: :mod:`hpt_hpc.progress`; None before the
    first report) of every job."""
    states = executor_named(record.executor).states(record.log_folder,
                                                    [e.job_id for e in record.jobs])
    rows = []
    for entry in record.jobs:
        state = states[entry.job_id]
        progress = None
        if entry.output_dir and entry.stage in STAGE_NAMES:
            progress = read_status(StageLayout(Path(entry.output_dir), entry.stage).progress)
        rows.append({"stage": entry.stage, "cell": entry.cell, "job_id": entry.job_id,
                     "state": state, "output_dir": entry.output_dir, "progress": progress})
    return rows


def cancel_jobs(record: LaunchRecord, stage: Optional[str] = None) -> List[str]:
    """Cancel every (or one stage's) job of a launch that has not ended; returns the
    cancelled ids. A local job is cancelled once none of its processes runs any more;
    a SLURM job once ``scancel`` took the request. :class:`WorkFailed` names every job
    that was not (its reason, or its processes still running), and the cancelled ones."""
    entries = [e.job_id for e in record.jobs if not stage or e.stage == stage]
    cancelled, failed = executor_named(record.executor).cancel(record.log_folder, entries)
    if failed:
        raise WorkFailed("; ".join(failed) + (f"; cancelled: {', '.join(cancelled)}"
                                               if cancelled else ""))
    return cancelled
