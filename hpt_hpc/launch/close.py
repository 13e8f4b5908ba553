"""Ending the pipeline run of a launch that returns before its jobs end (SLURM; local jobs
left running in the background): :class:`CloseJob`, submitted after the launch's jobs,
waits until none of them is active (on SLURM it starts only then, with
``--dependency=afterany``) and ends the run with their outcome: FINISHED when every job
succeeded, KILLED when the others were cancelled or killed, else FAILED (nested runs that
their killed jobs left RUNNING end with it). A run shared with another launch of the same
pipeline that is still active is left to that launch's closer.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import List

from ..config import OutputLayout
from ..errors import HptError
from ..tracking.runs import end_pipeline_run
from .executors import executor_named
from .record import LATEST, LaunchRecord
from .states import is_active

log = logging.getLogger(__name__)

POLL_S = 2.0
SUCCEEDED = ("COMPLETED", "FINISHED")
STOPPED = ("CANCELLED", "INTERRUPTED")  # cancelled (scancel, hpt-hpc cancel) or killed


def outcome(states: List[str], failed: bool = False) -> str:
    """The pipeline run's end status for its jobs' final states (``failed``: the
    submission itself failed part-way)."""
    words = [s.split(" ", 1)[0] for s in states]
    if failed or any(w not in SUCCEEDED + STOPPED for w in words):
        return "FAILED"
    return "KILLED" if any(w in STOPPED for w in words) else "FINISHED"


def settled_states(record: LaunchRecord) -> List[str]:
    """The state of every job of ``record``. Where no SLURM client answers (a closer
    running inside a container image has none), each ended job's result file tells."""
    return executor_named(record.executor).settled(record.log_folder,
                                                   [e.job_id for e in record.jobs])


def _other_launch_active(record: LaunchRecord) -> bool:
    """Whether another launch of the same pipeline run still has an active job."""
    for path in sorted(OutputLayout(Path(record.output_dir)).launches.glob("*.json")):
        if path.name == LATEST or path.resolve() == Path(record.path).resolve():
            continue
        try:
            other = LaunchRecord.load(path)
        except HptError:
            continue
        if (other.pipeline_run_id, other.tracking_uri) == \
                (record.pipeline_run_id, record.tracking_uri) \
                and not executor_named(other.executor).in_process \
                and any(map(is_active, settled_states(other))):
            return True
    return False


class CloseJob:
    """The submitted callable: ``CloseJob()(record_path, failed, wait_s)``; returns the
    status it gave the pipeline run (``RUNNING``: left to another launch, or its jobs
    were still active after ``wait_s`` seconds)."""

    def __call__(self, record_path: str, failed: bool = False, wait_s: float = 600.0) -> str:
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        record = LaunchRecord.load(Path(record_path))
        end = time.monotonic() + wait_s
        while True:
            states = settled_states(record)
            if not any(map(is_active, states)):
                break
            if time.monotonic() > end:
                log.warning("jobs still active after %.0f s (%s); pipeline run %s left "
                            "RUNNING", wait_s, ", ".join(states), record.pipeline_run_id)
                return "RUNNING"
            time.sleep(POLL_S)
        if _other_launch_active(record):
            log.info("another launch of pipeline run %s is active; it ends the run",
                     record.pipeline_run_id)
            return "RUNNING"
        status = outcome(states, failed)
        end_pipeline_run(record.tracking_uri, record.pipeline_run_id, status,
                         open_children=None if status == "FINISHED" else status)
        log.info("pipeline run %s ended %s (jobs: %s)", record.pipeline_run_id, status,
                 ", ".join(states))
        return status
