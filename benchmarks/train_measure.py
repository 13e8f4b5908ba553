"""Measuring helpers of ``train_throughput.py``: time, CPU, memory, batch search, report."""
from __future__ import annotations

import ctypes
import gc
import time
from pathlib import Path

import psutil
import torch

CUDA = torch.cuda.is_available()


def cpu_seconds() -> float:
    """CPU time of this process and its live children (loader workers)."""
    proc = psutil.Process()
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def sync():
    if CUDA:
        torch.cuda.synchronize()


def measure(runner, steps: int, batch: int):
    """(CPU seconds, wall seconds, images) of ``steps`` steps, device work included."""
    sync()
    cpu, wall = cpu_seconds(), time.perf_counter()
    for _ in range(steps):
        runner.step()
    runner.finish()
    sync()
    return cpu_seconds() - cpu, time.perf_counter() - wall, steps * batch


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2 ** 20


def reset_peak():
    gc.collect()
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2 ** 30
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return rss_mb()


def peak_since_reset():
    if CUDA:
        return torch.cuda.max_memory_allocated() / 2 ** 30
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child_uss_mb(exclude=()) -> float:
    """Unique memory of this process' children (loader workers) not in ``exclude``."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        try:
            total += 0 if child.pid in exclude else child.memory_full_info().uss / 2 ** 20
        except psutil.Error:
            pass
    return total


def largest_fitting(fits, start: int, limit: int, resolution: int) -> int:
    """Largest batch in [0, limit] with ``fits(batch)``, to within ``resolution`` (fits is
    monotone): double from ``start`` until a failure, then bisect. 0 if ``start`` fails."""
    low, high = 0, None
    batch = start
    while batch <= limit:
        if not fits(batch):
            high = batch
            break
        low, batch = batch, batch * 2
    if high is None:
        return low
    while high - low > resolution:
        mid = (low + high) // 2 // resolution * resolution or resolution
        if mid <= low:
            break
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def markdown(result: dict) -> str:
    m, s = result["machine"], result["settings"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cores']} cores (no GPU)"
    unit = "GB" if "gpu" in m else "MB"
    lines = [f"MoCo-v2 training step on {where}; torch {m['torch']}; median of "
             f"{s['rounds']} interleaved rounds; loaders: {s['loader_workers']} DALI "
             f"thread(s) / DataLoader worker(s) ({result['time']}).", "",
             f"| case | mode | batch | images/s | CPU-ms/image | peak memory ({unit}) |",
             "|---|---|---|---|---|---|"]
    for case, res in result["results"].items():
        for mode, row in res["modes"].items():
            peak = row["memory"].get("peak_gb", row["memory"].get("peak_mb"))
            lines.append(f"| {case} | {mode} | {row['batch']} | {row['images_per_s']:.1f} | "
                         f"{row['cpu_ms_per_image']:.1f} | {peak:.2f} |")
    lines += ["", "| case | " + " | ".join(RATIO_NAMES) + " |",
              "|---|" + "---|" * len(RATIO_NAMES)]
    for case, res in result["results"].items():
        cells = [f"{res['ratios'][k]:.2f}" if k in res["ratios"] else "-" for k in RATIO_NAMES]
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    for case, res in result["results"].items():
        others = {k: v for k, v in res["ratios"].items() if k.endswith("_vs_ours-synthetic")}
        if others:
            lines += ["", f"{case}, images/s vs ours-synthetic: " + ", ".join(
                f"{k.split('_vs_')[0]} {v:.2f}x" for k, v in others.items())]
    lines += ["", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}"
                                        for k, v in result["targets"].items())]
    search = result["batch_search"]
    if "largest_batch" in search:
        lines.append(f"Largest ResNet-50 224x224 batch of our step on one "
                     f"{search['gpu_memory_gb']} GB GPU: {search['largest_batch']} "
                     f"(+-{search['resolution']}).")
    return "\n".join(lines) + "\n"


RATIO_NAMES = ["ours_vs_reference", "ours_vs_reference_cpu", "step_vs_reference_step",
               "step_vs_reference_step_cpu", "input_cost", "switches_gain"]
