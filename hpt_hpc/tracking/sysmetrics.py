"""System metrics (CPU, memory, process, GPU where present), sampled by the tracker's
background thread. Names follow MLflow's ``system/...`` convention so the UI groups them."""
from __future__ import annotations

import sys
from typing import Dict

MB = 1024 * 1024


class SystemSampler:
    """One call of :meth:`sample` returns current readings; CPU percentages cover the time
    since the previous call. GPU readings need CUDA already initialised by the training
    (this thread never initialises it); utilisation needs ``pynvml`` (nvidia-ml-py)."""

    def __init__(self) -> None:
        import psutil
        self._psutil = psutil
        self._proc = psutil.Process()
        psutil.cpu_percent(None)
        self._proc.cpu_percent(None)
        self._nvml = None

    def sample(self) -> Dict[str, float]:
        ps = self._psutil
        vm = ps.virtual_memory()
        out = {
            "system/cpu_utilization_percentage": ps.cpu_percent(None),
            "system/system_memory_usage_percentage": vm.percent,
            "system/system_memory_usage_megabytes": (vm.total - vm.available) / MB,
            "system/process_cpu_percentage": self._proc.cpu_percent(None),
            "system/process_memory_rss_megabytes": self._proc.memory_info().rss / MB,
        }
        out.update(self._gpu())
        return out

    def _gpu(self) -> Dict[str, float]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return {}
        out: Dict[str, float] = {}
        for i in range(torch.cuda.device_count()):
            out[f"system/gpu_{i}_memory_allocated_megabytes"] = torch.cuda.memory_allocated(i) / MB
            out[f"system/gpu_{i}_memory_reserved_megabytes"] = torch.cuda.memory_reserved(i) / MB
            util = self._nvml_utilization(i)
            if util is not None:
                out[f"system/gpu_{i}_utilization_percentage"] = util
        return out

    def _nvml_utilization(self, index: int):
        if self._nvml is False:
            return None
        try:
            if self._nvml is None:
                import pynvml
                pynvml.nvmlInit()
                self._nvml = pynvml
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            return float(self._nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # no pynvml / no driver access: memory readings only
            self._nvml = False
            return None
