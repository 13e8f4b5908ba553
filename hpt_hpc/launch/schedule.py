"""The scheduling loop of the executors whose jobs this process watches (local, debug):
jobs start by dependency, not phase by phase, so independent phases overlap; each local
task gets its share of the cores (``HPT_CPUS_PER_TASK``, read by
:func:`hpt_hpc.device.limit_cpu_threads`). Also the one-line reasons of failed jobs."""
from __future__ import annotations

import dataclasses
import logging
import re
import time
from typing import Any, Dict, List, Optional, Tuple

from ..device import available_cores
from ..errors import HptError, WorkFailed
from ..plan import Phase, StagePlan
from .options import SchedulerOptions

log = logging.getLogger(__name__)

POLL_S = 0.2  # how often the local scheduler asks its running jobs whether they ended


def phase_options(phase: Phase, options: SchedulerOptions) -> SchedulerOptions:
    """Evaluations and embeddings are single processes: one node, one task (one GPU if
    any); only stages run DDP ranks."""
    if phase.plans and not any(isinstance(p, StagePlan) for p in phase.plans):
        return dataclasses.replace(options, nodes=1, tasks_per_node=1,
                                   gpus_per_node=min(1, options.gpus_per_node))
    return options


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


def failure_line(phase: Phase, label: str, exc: BaseException) -> str:
    who = phase.name if label in (phase.name, "default") else f"{phase.name} {label}"
    return f"{who}: {_reason(exc)}"


def width(phases: List[Phase]) -> int:
    """At most how many jobs can run at once: for some phase, its jobs plus those of every
    phase neither before nor after it (an upper bound of the widest unordered set)."""
    before: Dict[str, set] = {}
    for p in phases:  # upstream phases come first
        before[p.name] = set().union(*({a} | before[a] for a in p.after if a in before))

    def unordered(p: Phase, q: Phase) -> bool:
        return q is not p and p.name not in before[q.name] and q.name not in before[p.name]
    return max(len(p.plans) + sum(len(q.plans) for q in phases if unordered(p, q))
               for p in phases)


def run_here(executor: Any, phases: List[Phase], options: SchedulerOptions, record: Any,
             max_parallel: Optional[int], wait: bool) -> Tuple[List[str], bool]:
    """Jobs watched by this process (``executor.start`` starts one): a job starts once
    every phase in its ``after`` ended (``afterok`` with a failed upstream: the phase is not
    run), at most ``executor.max_running(max_parallel, jobs)`` at once across phases,
    lowest phase first. Returns the failure lines (in phase order) and whether all were
    user errors (raised in this process)."""
    names = {p.name for p in phases}
    after = {p.name: [a for a in p.after if a in names] for p in phases}
    needed = {a for p in phases for a in p.after}
    cap = executor.max_running(max_parallel, sum(len(p.plans) for p in phases))
    share = available_cores() // min(cap, width(phases)) if phases else 1
    ids: Dict[str, List[str]] = {p.name: [] for p in phases}
    left = {p.name: len(p.plans) for p in phases}  # jobs not yet ended
    failed: set = set()
    failures: List[Tuple[int, int, str]] = []
    user_errors = executor.in_process  # every failure a user error raised in this process
    waiting, ready, running = list(range(len(phases))), [], []
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
            popts = phase_options(phase, options)
            job = executor.start(record, i, phase, plan, popts,
                                 threads=max(1, share // popts.world_size))
            record.add_job(phase.name, plan, job, [x for a in after[phase.name] for x in ids[a]],
                           popts.world_size)
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
                failures.append((i, j, failure_line(phase, phase.plans[j].label, exc)))
                # in this process the error keeps its kind: bad input stays exit 2
                user_errors &= isinstance(exc, HptError) and not isinstance(exc, WorkFailed)
        background = not wait and all(phases[i].name not in needed for i, _, _ in running)
        if not waiting and not ready and (not running or background):
            return [line for _, _, line in sorted(failures)], user_errors
        if running and not ended:
            time.sleep(POLL_S)
