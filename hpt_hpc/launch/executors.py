"""The executors, one class each behind one interface (:class:`Executor`): how a launch's
phases are submitted with their dependencies, what state each job is in, how a job is
cancelled, and where the job that ends a detached launch's pipeline run goes.

* ``slurm`` (:class:`SlurmExecutor`): one submission (a job or a job array) per phase,
  dependencies as ``--dependency=afterok|afterany:<ids>`` (``afterok`` adds
  ``kill-on-invalid-dep``, so dependants of a failed job are cancelled, never run);
* ``local`` (:class:`LocalExecutor`): submitit processes on this machine, scheduled by
  dependency by :func:`hpt_hpc.launch.schedule.run_here`;
* ``debug`` (:class:`DebugExecutor`): one job at a time in this process, in phase order.

The table :data:`EXECUTORS` is the only place an executor name is mapped to its class
(``resolve_executor``: ``auto`` is slurm where ``sbatch`` is on PATH, else local). Add an
executor: a subclass here and its row in the table (docs/architecture.md).
"""
from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import HptError
from .container import task_python
from .options import SchedulerOptions, executor_parameters, job_setup
from .states import (CANCEL_WAIT_S, cancel_local, cancel_slurm, is_active, local_state,
                     result_state, slurm_states)

SLURM_TIMEOUT_S = 5
CLOSER_MINUTES = 10  # time limit of the SLURM job that ends a launch's pipeline run


def make_executor(kind: str, folder: Path, options: SchedulerOptions, name: str,
                  **kwargs: Any):
    """A submitit executor (``kind``: submitit's cluster name; ``kwargs``: its own
    keywords); with ``options.container`` every task runs inside that image (``folder``
    and ``options.container_binds`` bound in)."""
    import submitit
    if options.container:
        kwargs[f"{kind}_python"] = task_python(options, kind, folder)
    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind, **kwargs)
    executor.update_parameters(**executor_parameters(options, name))
    return executor


class Executor:
    """How jobs run. ``in_process``: in this process (no containers, nothing to cancel
    later, failures keep their kind); ``detached``: jobs may outlive this process."""

    name = ""
    in_process = False
    parallel_here = False  # runs several jobs side by side on this machine

    def check(self, options: SchedulerOptions) -> None:
        """Fail within seconds, before anything is created (a dead controller)."""

    def detached(self, wait: bool) -> bool:
        """Whether the jobs of a launch may still run when ``submit`` returns."""
        return not wait

    def writers(self, max_parallel: int, options: SchedulerOptions) -> int:
        """At most how many jobs write to the tracking store at once."""
        return max_parallel

    def max_running(self, max_parallel: Optional[int], jobs: int) -> int:
        """At most how many jobs run at once."""
        return max(1, max_parallel or jobs)

    def submit(self, phases: List[Any], options: SchedulerOptions, record: Any,
               max_parallel: Optional[int], wait: bool) -> Tuple[List[str], bool]:
        """Submit ``phases`` (jobs added to ``record``); returns the failure lines of the
        jobs that ended here and whether every one was bad input."""
        from .schedule import run_here  # plans and devices: imported where jobs are run
        return run_here(self, phases, options, record, max_parallel, wait)

    def start(self, record: Any, index: int, phase: Any, plan: Any,
              options: SchedulerOptions, threads: int) -> Any:
        """Start one job of ``phase`` (index ``index``) now; returns its handle."""
        raise NotImplementedError

    def job(self, folder: str, job_id: str, tasks: int) -> Any:
        """The job's submitit handle, for its result and logs."""
        raise NotImplementedError

    def states(self, folder: str, job_ids: Sequence[str]) -> Dict[str, str]:
        """The scheduler state of each job (:mod:`hpt_hpc.launch.states`)."""
        raise NotImplementedError

    def settled(self, folder: str, job_ids: Sequence[str]) -> List[str]:
        """The states the closer reads (as :meth:`states`)."""
        states = self.states(folder, job_ids)
        return [states[j] for j in job_ids]

    def cancel(self, folder: str, job_ids: Sequence[str]) -> Tuple[List[str], List[str]]:
        """Cancel the jobs that have not ended: the cancelled ids and why others were not."""
        raise NotImplementedError

    def submitter(self, folder: Path, options: SchedulerOptions, name: str) -> Any:
        """The submitit executor that starts this executor's jobs."""
        raise NotImplementedError

    def closer(self, folder: Path, options: SchedulerOptions, job_ids: Sequence[str],
               minutes: int) -> Any:
        """The submitit executor of the job that ends the pipeline run after ``job_ids``."""
        raise NotImplementedError

    def closer_minutes(self, options: SchedulerOptions) -> int:
        """The closer's time limit: a local job is restarted at most 6 times, so it waits
        up to 7 times a job's limit."""
        from .options import parse_minutes
        return 7 * parse_minutes(options.time) + 10


class SlurmExecutor(Executor):
    name = "slurm"

    def check(self, options: SchedulerOptions) -> None:
        check_slurm(options.partition)

    def detached(self, wait: bool) -> bool:
        return True

    def submit(self, phases, options, record, max_parallel, wait):
        from .schedule import phase_options
        folder, names = Path(record.log_folder), {p.name for p in phases}
        ids: Dict[str, List[str]] = {}
        for phase in phases:
            upstream_ids = [i for a in phase.after if a in names for i in ids[a]]
            popts = phase_options(phase, options)
            if max_parallel:
                popts = dataclasses.replace(popts, array_parallelism=max_parallel)
            executor = self.submitter(folder, popts, f"hpt-{phase.name}")
            if upstream_ids:
                dep = {"dependency": f"{phase.dependency}:" + ":".join(upstream_ids)}
                if phase.dependency == "afterok":
                    dep["kill-on-invalid-dep"] = "yes"
                executor.update_parameters(slurm_additional_parameters={**options.extra,
                                                                         **dep})
            plans = phase.plans
            from .job import job_for  # the engine: imported where jobs are submitted
            jobs = [executor.submit(job_for(plans[0]), plans[0])] if len(plans) == 1 else \
                executor.map_array(job_for(plans[0]), plans)
            for plan, job in zip(plans, jobs):
                record.add_job(phase.name, plan, job, upstream_ids, popts.world_size)
            ids[phase.name] = sorted({str(j.job_id).split("_")[0] for j in jobs})
        return [], False

    def job(self, folder, job_id, tasks):
        import submitit
        return submitit.SlurmJob(folder=folder, job_id=job_id, tasks=tuple(range(tasks)))

    def states(self, folder, job_ids):
        return slurm_states(job_ids)

    def settled(self, folder, job_ids):
        """Where no SLURM client answers (a closer inside a container image has none),
        each ended job's result file tells."""
        states = super().settled(folder, job_ids)
        if states and all(s == "UNKNOWN" for s in states):
            states = [result_state(folder, j) or "ENDED (no result)" for j in job_ids]
        return states

    def cancel(self, folder, job_ids):
        cancelled, failed = [], []
        states = slurm_states(job_ids)
        for job_id in job_ids:
            state = states.get(job_id, "UNKNOWN")
            if not is_active(state):
                continue  # ended already
            reason = cancel_slurm(job_id)
            if not reason and state == "UNKNOWN":  # scancel is silent about unknown ids
                reason = ("SLURM knows no such job: neither squeue nor sacct lists it; is "
                          "SLURM_CONF the cluster it was submitted to?")
            if reason:
                failed.append(f"job {job_id} not cancelled ({reason})")
            else:
                cancelled.append(job_id)
        return cancelled, failed

    def submitter(self, folder, options, name):
        """Requeued on a time limit at most ``options.max_num_timeout`` times."""
        return make_executor("slurm", folder, options, name,
                             slurm_max_num_timeout=options.max_num_timeout)

    def closer(self, folder, options, job_ids, minutes):
        executor = self.submitter(folder, options, "hpt-close")
        ids = sorted({j.split("_")[0] for j in job_ids})
        executor.update_parameters(slurm_additional_parameters={
            **options.extra, "dependency": "afterany:" + ":".join(ids)})
        return executor

    def closer_minutes(self, options):
        return CLOSER_MINUTES

    def writers(self, max_parallel, options):
        return min(options.array_parallelism, max_parallel)


class LocalExecutor(Executor):
    name = "local"
    parallel_here = True

    def __init__(self) -> None:
        self._submitters: Dict[int, Any] = {}  # one submitit executor per phase

    def start(self, record, index, phase, plan, options, threads):
        if index not in self._submitters:
            from ..device import CPUS_PER_TASK_ENV
            executor = self.submitter(Path(record.log_folder), options, f"hpt-{phase.name}")
            executor.update_parameters(local_setup=[f"export {CPUS_PER_TASK_ENV}={threads}",
                                                    *job_setup(options)])
            self._submitters[index] = executor
        from .job import job_for  # the engine: imported where jobs are submitted
        return self._submitters[index].submit(job_for(plan), plan)

    def job(self, folder, job_id, tasks):
        import submitit
        return submitit.LocalJob(folder=folder, job_id=job_id, tasks=tuple(range(tasks)))

    def states(self, folder, job_ids):
        return {j: local_state(folder, j) for j in job_ids}

    def cancel(self, folder, job_ids):
        """Also from a process that did not start the jobs: a job is cancelled once none
        of its processes runs any more."""
        cancelled, failed = [], []
        for job_id in job_ids:
            running = cancel_local(folder, job_id)
            if running:
                failed.append(f"job {job_id} still running after {CANCEL_WAIT_S:.0f} s: "
                              f"{', '.join(running)} (stop it with kill -KILL <pid>)")
            elif running is not None:
                cancelled.append(job_id)
        return cancelled, failed

    def submitter(self, folder, options, name):
        return make_executor("local", folder, options, name)

    def closer(self, folder, options, job_ids, minutes):
        return self.submitter(folder, options, "hpt-close")


class DebugExecutor(Executor):
    name = "debug"
    in_process = True

    def detached(self, wait: bool) -> bool:
        return False

    def max_running(self, max_parallel, jobs):
        return 1

    def start(self, record, index, phase, plan, options, threads):
        from .job import job_for  # the engine: imported where jobs are submitted
        job_id = f"inline-{len(record.jobs) + 1}"
        try:
            return InlineJob(job_id, job_for(plan)(plan))
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - reported with the other failures
            return InlineJob(job_id, error=exc)

    def job(self, folder, job_id, tasks):
        raise HptError(f"job {job_id} ran in-process (debug): it has no handle to read")

    def states(self, folder, job_ids):
        return {j: "ran in-process (debug)" for j in job_ids}

    def cancel(self, folder, job_ids):
        return [], []  # ran in the launching process: nothing left to cancel


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


EXECUTORS = {cls.name: cls for cls in (SlurmExecutor, LocalExecutor, DebugExecutor)}


def executor_named(name: str) -> Executor:
    """A fresh executor of that name (a launch record's ``executor``)."""
    if name not in EXECUTORS:
        raise HptError(f"--executor '{name}': use {', '.join(EXECUTORS)} (or auto)")
    return EXECUTORS[name]()


def resolve_executor(options: SchedulerOptions) -> Executor:
    """The documented rule: an explicit ``--executor`` wins; ``auto`` means ``slurm`` when
    ``sbatch`` is on PATH, else ``local``. (submitit's own AutoExecutor picks slurm whenever
    ``srun`` exists, even with no controller; we never let it guess.)"""
    if options.executor != "auto":
        return executor_named(options.executor)
    return executor_named("slurm" if shutil.which("sbatch") else "local")


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
