"""Scheduler states of a launch's jobs, read where they are true now, from any process.

SLURM: the controller (``squeue``) for every job it still holds, accounting (``sacct``)
for jobs it forgot; a requeued job's ended attempts come from accounting's full history
(``sacct --duplicates``), which keeps them, never from its newest record, which holds
the ended attempt only until the next one is registered (seconds).
Local: submitit's result file (``FINISHED``, or ``FAILED`` when the job raised), else the
job's controller process (its pid is the job id): ``RUNNING`` while it lives, else
``INTERRUPTED`` (killed or cancelled, no result).
"""
from __future__ import annotations

import re
import signal
import subprocess
import time
from typing import Dict, List, Optional, Sequence

from .submitit_private import LOCAL_CONTROLLER  # the module every local job's controller runs

# Scheduler states (SLURM's, the local ones) of a job that may still change.
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED",
                 "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "QUEUED", "UNKNOWN",
                 "STAGE_OUT", "SIGNALING", "READY")
# Final states of one attempt after which SLURM may requeue the job under the same id.
REQUEUE_CAUSES = ("NODE_FAIL", "PREEMPTED", "REQUEUED", "TIMEOUT", "BOOT_FAIL")
QUERY_TIMEOUT_S = 10
CANCEL_WAIT_S = 8.0  # how long `cancel` waits for a local job's processes to end


def is_active(state: str) -> bool:
    """True for a state a job can still leave (``CANCELLED by 0`` is final)."""
    return state.split(" ", 1)[0].upper() in ACTIVE_STATES


def _lines(cmd: List[str]) -> List[List[str]]:
    """``ID|STATE`` lines of a SLURM query ([] when it fails or does not answer)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=QUERY_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:  # e.g. a single id the controller no longer holds
        return []
    return [line.split("|", 1) for line in out.stdout.splitlines() if "|" in line]


def _expand(job_id: str) -> List[str]:
    """``12_[3-5,7%2]`` (array tasks not started yet) -> 12_3, 12_4, 12_5, 12_7."""
    match = re.fullmatch(r"(\d+)_\[([\d,-]+)(?:%\d+)?\]", job_id)
    if not match:
        return [job_id]
    ids = []
    for part in match[2].split(","):
        first, _, last = part.partition("-")
        ids += [f"{match[1]}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def slurm_states(job_ids: Sequence[str]) -> Dict[str, str]:
    """The state of each job id (``123``, array task ``123_4``): the controller's, else
    accounting's newest; an active job requeued before says after what, e.g. ``PENDING
    (requeued after NODE_FAIL)``. ``UNKNOWN`` when neither knows the job."""
    bases = ",".join(sorted({str(j).split("_")[0] for j in job_ids}))
    if not bases:
        return {}
    live = {i: s.split(" ", 1)[0] for i, s in
            _lines(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", bases])}
    history: Dict[str, List[str]] = {}  # every attempt, oldest first
    pending: Dict[str, str] = {}  # array tasks known only through a pending range record
    for job_id, state in _lines(["sacct", "-X", "-D", "-n", "-P", "-o", "JobID,State",
                                 "-j", bases]):
        if "[" in job_id:
            pending.update((i, state) for i in _expand(job_id))
        else:
            history.setdefault(job_id, []).append(state)
    states = {}
    for job_id in map(str, job_ids):
        attempts = history.get(job_id) or ([pending[job_id]] if job_id in pending else [])
        state = live.get(job_id) or (attempts[-1] if attempts else "UNKNOWN")
        # ended attempts: all but the current one, which accounting may not list yet
        ended = attempts[:-1] if attempts and is_active(attempts[-1]) else attempts
        causes = [a.split(" ", 1)[0] for a in ended if a.split(" ", 1)[0] in REQUEUE_CAUSES]
        if is_active(state) and causes:
            state += " (requeued)" if causes[-1] == "REQUEUED" else \
                f" (requeued after {causes[-1]})"
        states[job_id] = state
    return states


def _local_controller(folder: str, job_id: str):
    """The live controller process of a local job (None once it ended). The job id is
    the pid of the process submitit started: the controller, or a shell running it."""
    import psutil
    try:
        proc = psutil.Process(int(job_id))
        procs = [proc] + proc.children()
        for p in procs:
            cmd = p.cmdline()
            if p.status() != psutil.STATUS_ZOMBIE and LOCAL_CONTROLLER in cmd and \
                    any(folder in arg for arg in cmd):
                return p
    except (ValueError, psutil.Error):
        pass
    return None


def result_state(folder: str, job_id: str) -> str:
    """What submitit's result file of a job says: ``FINISHED``, ``FAILED`` (the job
    raised), or '' when there is none (yet)."""
    import pickle

    import submitit
    result = submitit.Job(folder=folder, job_id=job_id).paths.result_pickle
    if not result.exists():
        return ""
    try:
        with open(result, "rb") as handle:
            return "FINISHED" if pickle.load(handle)[0] == "success" else "FAILED"
    except Exception:  # noqa: BLE001 - no result to read: not a success
        return "FAILED (unreadable result)"


def local_state(folder: str, job_id: str) -> str:
    """FINISHED, FAILED (the job raised), RUNNING or INTERRUPTED (see the module)."""
    return result_state(folder, job_id) or \
        ("RUNNING" if _local_controller(folder, job_id) else "INTERRUPTED")


def cancel_local(folder: str, job_id: str, wait: float = CANCEL_WAIT_S) -> Optional[List[str]]:
    """Interrupt a local job's controller (it stops the job's tasks, SIGKILL after 1 s)
    and wait up to ``wait`` s for it and every process under it to end. None when it had
    ended already, else the processes still running (``pid N (name)``; [] once all
    ended)."""
    import psutil
    proc = _local_controller(folder, job_id)
    if proc is None:
        return None
    try:
        family = [proc, *proc.children(recursive=True)]
        if proc.pid != int(job_id):
            family.append(psutil.Process(int(job_id)))  # the shell running it
        proc.send_signal(signal.SIGINT)
    except psutil.NoSuchProcess:  # it ended in between
        return None
    deadline = time.time() + wait
    while True:
        alive = [p for p in family if _alive(p)]
        if not alive or time.time() > deadline:
            return [f"pid {p.pid} ({p.name()})" for p in alive if _alive(p)]
        time.sleep(0.1)


def _alive(proc) -> bool:
    import psutil
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def cancel_slurm(job_id: str) -> Optional[str]:
    """``scancel`` a SLURM job; None when it took the request, else why not (one line)."""
    try:
        out = subprocess.run(["scancel", job_id], capture_output=True, text=True,
                             timeout=QUERY_TIMEOUT_S)
    except FileNotFoundError:
        return "scancel is not installed or not on PATH"
    except subprocess.TimeoutExpired:
        return f"scancel got no answer within {QUERY_TIMEOUT_S} s"
    if out.returncode == 0:
        return None
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[-1].strip() if lines else f"scancel exited with code {out.returncode}"
