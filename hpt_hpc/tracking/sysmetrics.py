"""System metrics, sampled by the tracker's background thread: the readings of MLflow's own
monitors (CPU and memory; disk; GPU through nvidia-ml-py when it is installed and NVML
answers), plus what they do not cover (this process's CPU and memory, torch's GPU
allocator). Only the transport is ours: the readings go through the tracker's buffer, so
an unreachable server loses none of them (MLflow's monitor thread would drop them). Names
follow MLflow's ``system/...`` convention so the UI groups them."""
from __future__ import annotations

import logging
import sys
from typing import Dict, List

MB = 1024 * 1024
log = logging.getLogger(__name__)


def _mlflow_monitors() -> List:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    monitors = [CPUMonitor(), DiskMonitor()]
    try:
        import pynvml  # noqa: F401 - nvidia-ml-py, optional
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor
        monitors.append(GPUMonitor())
    except Exception:  # no nvidia-ml-py, no driver, no GPU: CPU readings only
        log.debug("no GPU monitor (nvidia-ml-py missing or NVML unavailable)")
    return monitors


class SystemSampler:
    """One call of :meth:`sample` returns current readings; CPU percentages cover the time
    since the previous call. torch's allocator figures need CUDA already initialised by the
    training (this thread never initialises it)."""

    def __init__(self) -> None:
        import psutil
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)
        self._monitors = _mlflow_monitors()
        psutil.cpu_percent(None)

    def sample(self) -> Dict[str, float]:
        out: Dict[str, float] = {}
        for monitor in self._monitors:
            monitor.collect_metrics()
            out.update({f"system/{k}": float(v) for k, v in monitor.aggregate_metrics().items()})
            monitor.clear_metrics()
        out["system/process_cpu_percentage"] = self._proc.cpu_percent(None)
        out["system/process_memory_rss_megabytes"] = self._proc.memory_info().rss / MB
        out.update(self._torch_gpu())
        return out

    @staticmethod
    def _torch_gpu() -> Dict[str, float]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        out: Dict[str, float] = {}
        for i in range(torch.cuda.device_count()):
            out[f"system/gpu_{i}_memory_allocated_megabytes"] = torch.cuda.memory_allocated(i) / MB
            out[f"system/gpu_{i}_memory_reserved_megabytes"] = torch.cuda.memory_reserved(i) / MB
        return out
