"""A stage preempted on the dev cluster against the same stage uninterrupted: the shared
check of bit-identical resumes (MoCo, DINO, tar shards)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from hpt_hpc.launch.commands import launch
from hpt_hpc.launch.options import build_options
from hpt_hpc.models import load_checkpoint


def preempted_equals_uninterrupted(cluster, tmp_path: Path,
                                   write_config: Callable[[Path], Path], stage: str,
                                   total: int, at: int) -> dict:
    """Launch the config ``write_config(folder)`` writes twice; SIGUSR2 the first at step
    ``at`` or later (as SLURM does before a time limit), so it checkpoints, is requeued and
    resumes; assert both end with the same weights. Returns the cut run's result."""
    runs = {}
    for name in ("cut", "whole"):
        folder = tmp_path / name
        folder.mkdir()
        record = launch(str(write_config(folder)), [stage],
                        build_options("dev", executor="slurm"))
        runs[name] = [record.job(e) for e in record.jobs if e.stage == stage][0]
    cut = runs["cut"]
    cluster.wait_for_step(cut, at, total)
    cut._interrupt()  # scancel --signal=USR2
    result = cut.result()
    assert 0 < (result["resumed_from"] or 0) < total, result
    assert result["steps"] == total
    assert "stopping at step" in cut.stderr()
    whole = runs["whole"].result()
    assert whole["resumed_from"] is None
    a = load_checkpoint(result["checkpoint"])["model"]
    b = load_checkpoint(whole["checkpoint"])["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    return result
