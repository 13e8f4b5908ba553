"""The one submitter: phases of plans run on any executor (:mod:`hpt_hpc.launch.executors`:
slurm, local, debug).

A phase is one submission (a single job or a job array) that starts after the phases it
names; how the dependency is expressed is the executor's (SLURM ``--dependency``, local
and in-process by waiting). :func:`run_phases` adds the launch's preflight (tracking
store, controller, container), the pipeline run (ended here, or after the last job by a
closing job when jobs outlive this process) and the launch record; ``train``, ``launch``,
``sweep``, ``quickstart`` and ``probe``/``finetune``/``embed`` on an executor other than
debug all go through it.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import List, Optional, Sequence

from ..config import OutputLayout
from ..errors import HptError, WorkFailed
from ..files import make_folder
from ..hub import using_cache
from ..plan import Phase, TrackingTarget, with_parent
from ..tracking.runs import end_pipeline_run, start_pipeline_run
from ..tracking.store import prepare_store
from .close import CloseJob
from .container import plan_paths, preflight
from .executors import Executor, executor_named, resolve_executor
from .options import SchedulerOptions
from .record import LaunchRecord

log = logging.getLogger(__name__)

def submit(phases: Sequence[Phase], options: SchedulerOptions, record: LaunchRecord,
           max_parallel: Optional[int] = None, wait: bool = True) -> LaunchRecord:
    """Run ``phases`` on ``record.executor`` (see the module docstring). Local: at most
    ``max_parallel`` jobs at once across all phases (None: no limit); with ``wait`` False,
    jobs of phases nothing depends on keep running in the background. Failures of
    local/debug jobs raise one error at the end, naming every failed job:
    :class:`WorkFailed`, or :class:`HptError` when every failure was bad input caught in
    this process (debug)."""
    phases = [p for p in phases if p.plans]
    failures, user_errors = executor_named(record.executor).submit(
        phases, options, record, max_parallel, wait)
    if failures:
        record.save()
        kind_of_error = HptError if user_errors else WorkFailed
        raise kind_of_error(f"{len(failures)} job(s) failed or did not run: "
                       + "; ".join(failures[:5]) + (" ..." if len(failures) > 5 else "")
                       + f" -- logs: {record.log_folder}; the launch record: {record.path}")
    return record


def run_phases(phases: List[Phase], options: SchedulerOptions, *, output_dir: Path,
               source: str, name: str, tracking: Optional[TrackingTarget],
               writers: int = 1, max_parallel: Optional[int] = None,
               folder: Optional[str] = None, wait: bool = True,
               labels: Sequence[str] = (), config: Optional[dict] = None,
               end: bool = True) -> LaunchRecord:
    """Preflight, pipeline run, submission, launch record.

    ``name``: the pipeline (its MLflow parent run, whose artifact is ``config``);
    ``source``: the config or experiment file; ``writers``: how many tasks may write to the
    tracking store at once (an sqlite store refuses too many); ``labels``: what the record
    lists as launched. With ``end``, the pipeline run ends FINISHED (FAILED when a job
    failed): here when every job ran to its end here (debug, or local with ``wait``),
    else after the last job, through :func:`_close_later`.
    """
    with using_cache(options.model_cache):  # jobs run here read the profile's cache
        return _run_phases(phases, options, output_dir=output_dir, source=source, name=name,
                           tracking=tracking, writers=writers, max_parallel=max_parallel,
                           folder=folder, wait=wait, labels=labels, config=config, end=end)


def _run_phases(phases: List[Phase], options: SchedulerOptions, *, output_dir: Path,
                source: str, name: str, tracking: Optional[TrackingTarget], writers: int,
                max_parallel: Optional[int], folder: Optional[str], wait: bool,
                labels: Sequence[str], config: Optional[dict], end: bool) -> LaunchRecord:
    executor = resolve_executor(options)
    if options.container:
        preflight(options, executor.in_process)
    executor.check(options)  # before anything is created: a dead controller leaves no store
    make_folder(output_dir)  # a read-only mount: one line before any store or job
    if tracking is not None:
        prepare_store(tracking.uri, num_tasks=max(1, writers), nodes=options.nodes)
    plans = [p for phase in phases for p in phase.plans]
    if options.container:
        for plan in plans:
            Path(plan.config.output_dir).mkdir(parents=True, exist_ok=True)
        binds = [str(p) for p in plan_paths(plans, tracking.uri if tracking else None)]
        options = dataclasses.replace(options, container_binds=binds + list(options.container_binds))
    output_dir = Path(output_dir).resolve()
    parent = None
    if tracking is not None:
        parent = start_pipeline_run(tracking.uri, tracking.experiment, name, output_dir,
                                    config=config)
        with_parent(phases, parent)
    log_folder = Path(folder or OutputLayout(output_dir).log_folder).resolve()
    record = LaunchRecord.new(output_dir, executor.name, source, list(labels) or [name],
                              str(log_folder))
    record.tracking_uri, record.pipeline_run_id = (tracking.uri if tracking else ""), parent or ""
    status = "FAILED"
    try:
        submit(phases, options, record, max_parallel, wait)
        status = "FINISHED"
    finally:
        record.save()
        if parent and end:
            if not executor.detached(wait) or not record.jobs:
                end_pipeline_run(tracking.uri, parent, status)
            else:  # the jobs run on: the run ends after the last one
                _close_later(executor, record, options, failed=status != "FINISHED")
    return record


def _close_later(executor: Executor, record: LaunchRecord, options: SchedulerOptions,
                 failed: bool) -> None:
    """Submit the :class:`~hpt_hpc.launch.close.CloseJob` of a launch whose jobs outlive
    this process, on the launch's executor, after all of them (on SLURM a 1-CPU job
    ``afterany`` all of them; locally a process that polls them)."""
    minutes = executor.closer_minutes(options)
    copts = dataclasses.replace(options, nodes=1, tasks_per_node=1, gpus_per_node=0,
                                cpus_per_task=1, mem=None, time=str(minutes))
    try:
        submitter = executor.closer(Path(record.log_folder), copts,
                                    [e.job_id for e in record.jobs], minutes)
        job = submitter.submit(CloseJob(), record.path, failed, 60.0 * (minutes - 2))
    except Exception as exc:  # noqa: BLE001 - the jobs run; only the run's end is lost
        log.warning("could not submit the job that ends pipeline run %s (%s); it stays "
                    "RUNNING", record.pipeline_run_id, exc)
        return
    record.closer_job_id = str(job.job_id)
    record.save()


def describe(record: LaunchRecord) -> str:
    """Job ids and log locations, for the terminal."""
    lines = [f"launched with executor '{record.executor}'; record: {record.path}"]
    if record.tracking_uri:
        ends = f"; ended by job {record.closer_job_id} after the others" \
            if record.closer_job_id else ""
        lines.append(f"MLflow: {record.tracking_uri} (pipeline run {record.pipeline_run_id}"
                     f"{ends})")
    for e in record.jobs:
        dep = f" after {','.join(e.depends_on)}" if e.depends_on else ""
        cell = "" if e.cell in ("default", e.stage) else f" [{e.cell}]"
        logs = f"\n    stdout {e.stdout}" if e.stdout else ""
        lines.append(f"  {e.stage}{cell}: job {e.job_id}{dep}{logs}\n    output {e.output_dir}")
    return "\n".join(lines)
