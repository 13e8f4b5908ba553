"""Seeding, RNG capture/restore and device choice for reproducible, resumable stages.

RNG states are stored as tensors and plain lists so checkpoints load with
``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import random
from typing import Any, Dict

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) generators."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def capture_rng_state() -> Dict[str, Any]:
    """All generator states as weights_only-safe values."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                  int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [int(py_state[0]), list(py_state[1]),
                   None if py_state[2] is None else float(py_state[2])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def resolve_device(name: str) -> torch.device:
    """``auto`` -> first CUDA device when present, else CPU; ``cuda`` without a GPU fails."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was requested but no CUDA GPU is visible; "
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
    task (so DDP ranks sharing a node do not oversubscribe it). On 2 cores with one worker
    this made a quickstart step 1.5x faster than letting torch and the worker fight.
    """
    if device.type != "cpu":
        return torch.get_num_threads()
    cores = available_cores()
    per_task = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit():
        cores = min(cores, int(per_task))
    threads = max(1, cores - max(0, loader_workers))
    torch.set_num_threads(threads)
    return threads
