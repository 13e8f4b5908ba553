"""The one submitter: phases of plans run on any executor (slurm, local, debug).

A phase is one submission (a single job or a job array) that starts after the phases it
names: on SLURM through ``--dependency=afterok|afterany:<ids>`` (``afterok`` adds
``kill-on-invalid-dep``, so dependants of a failed job are cancelled, never run); locally
and in-process by waiting for them (a phase whose ``afterok`` upstream failed is not run).
Local jobs are scheduled by dependency, not phase by phase: a job starts as soon as the
phases it waits for ended, so independent phases overlap, with at most ``max_parallel``
jobs running across all phases; each task gets its share of the cores
(``HPT_CPUS_PER_TASK``, read by :func:`hpt_hpc.device.limit_cpu_threads`). The debug
executor runs one job at a time in this process, in phase order. :func:`run_phases` adds
the launch's preflight (tracking store, controller, container), the pipeline run (ended
here, or after the last job by a closing job when jobs outlive this process) and the
launch record; ``train``, ``launch``, ``sweep`` and ``quickstart`` all go through it.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import OutputLayout
from ..device import CPUS_PER_TASK_ENV, available_cores
from ..errors import HptError, WorkFailed
from ..files import make_folder
from ..hub import using_cache
from ..plan import EvalPlan, Phase, TrackingTarget, with_parent
from ..tracking.runs import end_pipeline_run, start_pipeline_run
from ..tracking.store import prepare_store
from .close import CloseJob
from .container import plan_paths, preflight, task_python
from .job import job_for
from .options import (SchedulerOptions, executor_parameters, job_setup, parse_minutes,
                      resolve_executor)
from .record import JobEntry, LaunchRecord

log = logging.getLogger(__name__)

SLURM_TIMEOUT_S = 5
POLL_S = 0.2  # how often the local scheduler asks its running jobs whether they ended
CLOSER_MINUTES = 10  # time limit of the SLURM job that ends a launch's pipeline run


def _run(cmd: Sequence[str], check: bool = True) -> str:
    try:
        out = subprocess.run(list(cmd), capture_output=True, text=True,
                             timeout=SLURM_TIMEOUT_S)
    except FileNotFoundError as exc:
        raise HptError(f"'{cmd[0]}' is not installed or not on PATH; use --executor local "
                       f"or debug to run without SLURM") from exc
    except subprocess.TimeoutExpired as exc:
        raise HptError(f"SLURM did not answer '{' '.join(cmd)}' within {SLURM_TIMEOUT_S} s: "
                       f"the controller (slurmctld) is down or unreachable") from exc
    if check and out.returncode != 0:
        raise HptError(f"'{' '.join(cmd)}' failed: {(out.stderr or out.stdout).strip()}")
    return out.stdout


def check_slurm(partition: Optional[str]) -> List[str]:
    """Fail within seconds when the controller is down or the partition unknown."""
    ping = _run(["scontrol", "ping"], check=False)
    if " is UP" not in ping:
        status = " ".join(ln for ln in ping.splitlines() if "Slurmctld" in ln) or ping.strip()
        raise HptError(f"the SLURM controller is not responding ({status or 'no answer'}); "
                       f"nothing was submitted. Is slurmctld running? (dev cluster: "
                       f"bash slurm/dev-cluster/start.sh)")
    partitions = [p.rstrip("*") for p in _run(["sinfo", "-h", "-o", "%P"]).split()]
    if partition and partition not in partitions:
        raise HptError(f"unknown partition '{partition}'; this cluster has: "
                       f"{', '.join(partitions) or 'none'}")
    return partitions


def make_executor(kind: str, folder: Path, options: SchedulerOptions, name: str):
    """A submitit executor; with ``options.container`` every task runs inside that image
    (``folder`` and ``options.container_binds`` bound in)."""
    import submitit
    kwargs = {}
    if options.container:
        kwargs[f"{kind}_python"] = task_python(options, kind, folder)
    if kind == "slurm":
        kwargs["slurm_max_num_timeout"] = options.max_num_timeout
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind, **kwargs)
    executor.update_parameters(**executor_parameters(options, name))
    return executor


class InlineJob:
    """A plan run in this process (the debug executor): its result or its error."""

    def __init__(self, job_id: str, result: Any = None, error: Optional[BaseException] = None):
        self.job_id, self._result, self.error = job_id, result, error
        self.state = "FAILED" if error else "FINISHED"

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self._result

    def results(self) -> List[Any]:
        return [self.result()]

    def done(self) -> bool:
        return True


def _phase_options(phase: Phase, options: SchedulerOptions) -> SchedulerOptions:
    """Evaluations are single processes: one node, one task (one GPU if any)."""
    if phase.plans and all(isinstance(p, EvalPlan) for p in phase.plans):
        return dataclasses.replace(options, nodes=1, tasks_per_node=1,
                                   gpus_per_node=min(1, options.gpus_per_node))
    return options


def _entry(record: LaunchRecord, phase: Phase, plan: Any, job: Any, after: List[str],
           options: SchedulerOptions) -> None:
    record.live[str(job.job_id)] = job
    paths = getattr(job, "paths", None)
    record.jobs.append(JobEntry(stage=phase.name, job_id=str(job.job_id), cell=plan.label,
                                depends_on=list(after),
                                output_dir=str(Path(plan.config.output_dir).resolve()),
                                stdout=str(paths.stdout) if paths else "",
                                stderr=str(paths.stderr) if paths else "",
                                tasks=options.world_size))


_EXCEPTION_LINE = re.compile(r"^(?:[\w.]+\.)?(\w*(?:Error|Exception|Interrupt)\w*): (.+)$")


def _reason(exc: BaseException) -> str:
    """One line: a user error's message, else the job's exception line (a local job's
    error text holds its whole traceback)."""
    text = str(exc).strip()
    if isinstance(exc, HptError) or not text:
        return text.splitlines()[0] if text else repr(exc)
    found = [m for m in map(_EXCEPTION_LINE.match, text.splitlines()) if m]
    line = f"{found[-1][1]}: {found[-1][2]}" if found else text.splitlines()[0]
    return line if len(line) <= 300 else line[:297] + "..."


def _failure(phase: Phase, label: str, exc: BaseException) -> str:
    who = phase.name if label in (phase.name, "default") else f"{phase.name} {label}"
    return f"{who}: {_reason(exc)}"


def submit(phases: Sequence[Phase], options: SchedulerOptions, record: LaunchRecord,
           max_parallel: Optional[int] = None, wait: bool = True) -> LaunchRecord:
    """Run ``phases`` on ``record.executor`` (see the module docstring). Local: at most
    ``max_parallel`` jobs at once across all phases (None: no limit); with ``wait`` False,
    jobs of phases nothing depends on keep running in the background. Failures of
    local/debug jobs raise one error at the end, naming every failed job:
    :class:`WorkFailed`, or :class:`HptError` when every failure was bad input caught in
    this process (debug)."""
    phases = [p for p in phases if p.plans]
    if record.executor == "slurm":
        _submit_slurm(phases, options, record, max_parallel)
        return record
    failures, user_errors = _run_here(phases, options, record, max_parallel, wait)
    if failures:
        record.save()
        kind_of_error = HptError if user_errors else WorkFailed
        raise kind_of_error(f"{len(failures)} job(s) failed or did not run: "
                       + "; ".join(failures[:5]) + (" ..." if len(failures) > 5 else "")
                       + f" -- logs: {record.log_folder}; the launch record: {record.path}")
    return record


def _submit_slurm(phases: List[Phase], options: SchedulerOptions, record: LaunchRecord,
                  max_parallel: Optional[int]) -> None:
    folder, names = Path(record.log_folder), {p.name for p in phases}
    ids: Dict[str, List[str]] = {}
    for phase in phases:
        upstream_ids = [i for a in phase.after if a in names for i in ids[a]]
        popts = _phase_options(phase, options)
        if max_parallel:
            popts = dataclasses.replace(popts, array_parallelism=max_parallel)
        executor = make_executor("slurm", folder, popts, f"hpt-{phase.name}")
        if upstream_ids:
            dep = {"dependency": f"{phase.dependency}:" + ":".join(upstream_ids)}
            if phase.dependency == "afterok":
                dep["kill-on-invalid-dep"] = "yes"
            executor.update_parameters(slurm_additional_parameters={**options.extra, **dep})
        plans = phase.plans
        jobs = [executor.submit(job_for(plans[0]), plans[0])] if len(plans) == 1 else \
            executor.map_array(job_for(plans[0]), plans)
        for plan, job in zip(plans, jobs):
            _entry(record, phase, plan, job, upstream_ids, popts)
        ids[phase.name] = sorted({str(j.job_id).split("_")[0] for j in jobs})


def _width(phases: List[Phase]) -> int:
    """At most how many jobs can run at once: for some phase, its jobs plus those of every
    phase neither before nor after it (an upper bound of the widest unordered set)."""
    before: Dict[str, set] = {}
    for p in phases:  # upstream phases come first
        before[p.name] = set().union(*({a} | before[a] for a in p.after if a in before))

    def unordered(p: Phase, q: Phase) -> bool:
        return q is not p and p.name not in before[q.name] and q.name not in before[p.name]
    return max(len(p.plans) + sum(len(q.plans) for q in phases if unordered(p, q))
               for p in phases)


def _run_here(phases: List[Phase], options: SchedulerOptions, record: LaunchRecord,
              max_parallel: Optional[int], wait: bool) -> Tuple[List[str], bool]:
    """Local and debug: a job starts once every phase in its ``after`` ended (``afterok``
    with a failed upstream: the phase is not run), at most ``max_parallel`` local jobs at
    once across phases, lowest phase first; debug runs one at a time in this process.
    Returns the failure lines (in phase order) and whether all were user errors."""
    kind, folder = record.executor, Path(record.log_folder)
    names = {p.name for p in phases}
    after = {p.name: [a for a in p.after if a in names] for p in phases}
    needed = {a for p in phases for a in p.after}
    cap = 1 if kind == "debug" else max(1, max_parallel or sum(len(p.plans) for p in phases))
    share = available_cores() // min(cap, _width(phases)) if phases else 1
    ids: Dict[str, List[str]] = {p.name: [] for p in phases}
    left = {p.name: len(p.plans) for p in phases}  # jobs not yet ended
    failed: set = set()
    failures: List[Tuple[int, int, str]] = []
    user_errors = kind == "debug"  # every failure a user error raised in this process
    waiting, ready, running = list(range(len(phases))), [], []
    executors: Dict[int, Any] = {}
    while True:
        for i in list(waiting):  # release phases whose upstream ended (cascades in order)
            phase = phases[i]
            if any(left[a] for a in after[phase.name]):
                continue
            waiting.remove(i)
            if phase.dependency == "afterok" and any(a in failed for a in after[phase.name]):
                failed.add(phase.name)
                left[phase.name] = 0
                failures.append((i, -1, f"{phase.name}: not run, because "
                                        f"{', '.join(after[phase.name])} failed"))
            else:
                ready = sorted(ready + [(i, j) for j in range(len(phase.plans))])
        if waiting and not ready and not running:
            raise HptError(f"phases wait for each other in a circle: "
                           f"{', '.join(phases[i].name for i in waiting)}")
        while ready and len(running) < cap:
            i, j = ready.pop(0)
            phase, plan = phases[i], phases[i].plans[j]
            popts = _phase_options(phase, options)
            if kind == "debug":
                job = _inline(record, job_for(plan), plan)
            else:
                if i not in executors:
                    executors[i] = make_executor("local", folder, popts, f"hpt-{phase.name}")
                    threads = max(1, share // popts.world_size)
                    executors[i].update_parameters(
                        local_setup=[f"export {CPUS_PER_TASK_ENV}={threads}",
                                     *job_setup(popts)])
                job = executors[i].submit(job_for(plan), plan)
            _entry(record, phase, plan, job, [x for a in after[phase.name] for x in ids[a]],
                   popts)
            ids[phase.name].append(str(job.job_id))
            running.append((i, j, job))
        ended = [r for r in running if r[2].done()]
        for i, j, job in ended:
            running.remove((i, j, job))
            phase = phases[i]
            left[phase.name] -= 1
            try:
                job.results()
            except Exception as exc:  # noqa: BLE001 - report every failed job
                log.error("%s %s failed: %s", phase.name, phase.plans[j].label, exc)
                failed.add(phase.name)
                failures.append((i, j, _failure(phase, phase.plans[j].label, exc)))
                # in this process the error keeps its kind: bad input stays exit 2
                user_errors &= isinstance(exc, HptError) and not isinstance(exc, WorkFailed)
        background = not wait and all(phases[i].name not in needed for i, _, _ in running)
        if not waiting and not ready and (not running or background):
            return [line for _, _, line in sorted(failures)], user_errors
        if running and not ended:
            time.sleep(POLL_S)


def _inline(record: LaunchRecord, job: Any, plan: Any) -> InlineJob:
    job_id = f"inline-{len(record.jobs) + 1}"
    try:
        return InlineJob(job_id, job(plan))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - reported with the other failures
        return InlineJob(job_id, error=exc)


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
    kind = resolve_executor(options)
    if options.container:
        preflight(options, kind)
    if kind == "slurm":  # before anything is created: a dead controller leaves no store
        check_slurm(options.partition)
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
    record = LaunchRecord.new(output_dir, kind, source, list(labels) or [name],
                              str(log_folder))
    record.tracking_uri, record.pipeline_run_id = (tracking.uri if tracking else ""), parent or ""
    synchronous = kind == "debug" or (kind == "local" and wait)
    status = "FAILED"
    try:
        submit(phases, options, record, max_parallel, wait)
        status = "FINISHED"
    finally:
        record.save()
        if parent and end:
            if synchronous or not record.jobs:
                end_pipeline_run(tracking.uri, parent, status)
            else:  # the jobs run on: the run ends after the last one
                _close_later(record, options, failed=status != "FINISHED")
    return record


def _close_later(record: LaunchRecord, options: SchedulerOptions, failed: bool) -> None:
    """Submit the :class:`~hpt_hpc.launch.close.CloseJob` of a launch whose jobs outlive
    this process: on SLURM a 1-CPU job ``afterany`` all of them; locally a process that
    polls them (time limit: 7 times theirs, as a local job is restarted at most 6 times)."""
    kind = record.executor
    minutes = CLOSER_MINUTES if kind == "slurm" else 7 * parse_minutes(options.time) + 10
    copts = dataclasses.replace(options, nodes=1, tasks_per_node=1, gpus_per_node=0,
                                cpus_per_task=1, mem=None, time=str(minutes))
    try:
        executor = make_executor(kind, Path(record.log_folder), copts, "hpt-close")
        if kind == "slurm":
            ids = sorted({e.job_id.split("_")[0] for e in record.jobs})
            executor.update_parameters(slurm_additional_parameters={
                **options.extra, "dependency": "afterany:" + ":".join(ids)})
        job = executor.submit(CloseJob(), record.path, failed, 60.0 * (minutes - 2))
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
