"""Device and CPU-thread choice, shared by training and evaluation."""
from __future__ import annotations

import os
from typing import Optional

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


def cpu_threads(device: torch.device, loader_workers: int,
                threads: Optional[int] = None) -> int:
    """The torch intra-op thread count a job runs with (the rule; nothing is set).

    ``threads`` (``compute.threads``) given: exactly that many, on any device. Else, on
    CPU, one core per loader worker is left free: cores - workers (>= 1), where cores are
    this process's CPU affinity, capped by ``SLURM_CPUS_PER_TASK`` inside a SLURM task (so
    DDP ranks sharing a node do not oversubscribe it) and by :data:`CPUS_PER_TASK_ENV`
    inside a local job (its share when jobs run side by side). On 2 cores with one worker
    this made a quickstart step 1.5x faster than letting torch and the worker fight. On
    CUDA torch's own count is kept.
    """
    if threads:
        return int(threads)
    if device.type != "cpu":
        return torch.get_num_threads()
    cores = available_cores()
    for name in ("SLURM_CPUS_PER_TASK", CPUS_PER_TASK_ENV):
        per_task = os.environ.get(name, "")
        if per_task.isdigit() and int(per_task) > 0:
            cores = min(cores, int(per_task))
    return max(1, cores - max(0, loader_workers))


def limit_cpu_threads(device: torch.device, loader_workers: int,
                      threads: Optional[int] = None) -> int:
    """Set torch's intra-op threads to :func:`cpu_threads`; returns the count."""
    count = cpu_threads(device, loader_workers, threads)
    torch.set_num_threads(count)
    return count


# Environment variables that pin the CPU kernels torch dispatches to (ATen, oneDNN, MKL).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_CBWR",
              "MKL_ENABLE_INSTRUCTIONS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
              "OMP_WAIT_POLICY")
# CPU flags that change which kernels run (and so the bits of a CPU result).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_tile", "amx_bf16")


def _cpuinfo() -> dict:
    """The first processor's fields of ``/proc/cpuinfo`` (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            block = handle.read().split("\n\n")[0]
    except OSError:
        return {}
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in block.splitlines()) if k.strip()}


def _library_versions() -> dict:
    """Versions of the math libraries inside torch (from ``torch.__config__.show()``)."""
    import re
    shown = torch.__config__.show()
    found = {"mkl": re.search(r"Math Kernel Library Version ([\d.]+)", shown),
             "onednn": re.search(r"MKL-DNN v([\d.]+)", shown)}
    return {k: m.group(1) for k, m in found.items() if m}


def machine_facts(device: torch.device, threads: int, loader_workers: int) -> dict:
    """What decides the bits of a CPU result besides the config: the CPU (model, kernel
    ISA torch dispatches to, kernel pins in the environment), threads, loader workers and
    versions. Two runs agree bit for bit only where these agree (README)."""
    import platform
    import sys
    cpu = _cpuinfo()
    flags = set(cpu.get("flags", "").split())
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("torchvision", "numpy", "PIL"):
        module = sys.modules.get(name) or __import__(name)
        versions[name.lower()] = getattr(module, "__version__", "?")
    versions.update(_library_versions())
    return {
        "cpu": cpu.get("model name") or platform.processor() or platform.machine(),
        "cpu_vendor": cpu.get("vendor_id", ""),
        "cpu_family_model": "/".join(cpu.get(k, "?") for k in ("cpu family", "model",
                                                                "stepping")),
        "machine": platform.machine(),
        "cores": available_cores(),
        "isa_flags": [f for f in ISA_FLAGS if f in flags],
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_threads": int(threads),
        "loader_workers": int(loader_workers),
        "versions": versions,
    }
