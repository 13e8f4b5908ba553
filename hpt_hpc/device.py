"""Device and CPU-thread choice, shared by training and evaluation."""
from __future__ import annotations

import os

import torch

from .errors import HptError

# Cores each task of a local job may use: the local submitter's share of the cores when it
# runs several jobs at once (SLURM tasks have SLURM_CPUS_PER_TASK instead).
CPUS_PER_TASK_ENV = "HPT_CPUS_PER_TASK"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> first CUDA device when present, else CPU; ``cuda`` without a GPU fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HptError("device 'cuda' was requested but no CUDA GPU is visible; "
                       "use --set device=cpu (or auto)")
    return torch.device(name)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def limit_cpu_threads(device: torch.device, loader_workers: int) -> int:
    """On CPU, leave one core per loader worker: torch threads = cores - workers (>= 1).

    Cores are this process's CPU affinity, capped by ``SLURM_CPUS_PER_TASK`` inside a SLURM
    task (so DDP ranks sharing a node do not oversubscribe it) and by
    :data:`CPUS_PER_TASK_ENV` inside a local job (its share when jobs run side by side). On
    2 cores with one worker this made a quickstart step 1.5x faster than letting torch and
    the worker fight.
    """
    if device.type != "cpu":
        return torch.get_num_threads()
    cores = available_cores()
    for name in ("SLURM_CPUS_PER_TASK", CPUS_PER_TASK_ENV):
        per_task = os.environ.get(name, "")
        if per_task.isdigit() and int(per_task) > 0:
            cores = min(cores, int(per_task))
    threads = max(1, cores - max(0, loader_workers))
    torch.set_num_threads(threads)
    return threads
