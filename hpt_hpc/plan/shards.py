"""Packing a dataset into tar shards as jobs (``hpt-hpc data shard --executor slurm``):
:class:`ShardPlan` (one job: a range of shards of one split, or that split's manifest)
and :func:`shard_phases` (per split, an array over shard ranges, then the manifest job
``afterok`` on it). Shard ``i`` is a pure function of the packing plan
(:func:`hpt_hpc.data.shards.pack_plan`) and ``i``, so the jobs write the same bytes as
one process packing everything."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..config import ExperimentConfig
from ..config.schema import DatasetConfig
from .plans import Phase, TrackingTarget

SOURCE = "source"  # the dataset's name in a shard plan's config


@dataclass
class ShardPlan:
    """Pack shards ``shards`` of ``split`` (``()``: none, write and check the manifest once
    every shard exists) into ``dest``; ``config``: the source dataset (``datasets``) and
    the shard root (``output_dir``: launch records and job logs go there)."""

    config: ExperimentConfig
    split: str
    dest: str
    shard_size: int
    seed: int
    shards: Tuple[int, ...]
    label: str
    known: Optional[dict] = None  # the packing plan made at submission (its cuts)
    tracking: Optional[TrackingTarget] = None
    kind = "shard"

    @property
    def dataset(self) -> DatasetConfig:
        return self.config.datasets[SOURCE]

    def describe(self) -> str:
        what = f"shards {self.shards[0]}..{self.shards[-1]}" if self.shards else \
            "the manifest, once every shard exists"
        return f"{self.label}: {self.split} of {self.dataset.path}: {what} -> {self.dest}"


def shard_phases(path: str, fmt: str, splits: Sequence[str], dest: str, shard_size: int,
                 seed: int, per_job: int) -> List[Phase]:
    """Per split: phase ``pack-<split>`` (one job per ``per_job`` shards) and phase
    ``manifest-<split>`` after it. Each split is planned here once (listing, image sizes,
    cuts); the jobs take its cuts while their listing is the same."""
    from ..data.shards import pack_plan
    dest = os.path.abspath(dest)
    ds = DatasetConfig(path=os.path.abspath(path), format=fmt,
                       splits={s: s for s in splits})
    cfg = ExperimentConfig(output_dir=dest, datasets={SOURCE: ds})
    phases = []
    for split in splits:
        folder = os.path.join(dest, split)
        known = pack_plan(ds, split, folder, shard_size, seed)[2]
        count = len(known["cuts"]) - 1
        plans = [ShardPlan(cfg, split, folder, shard_size, seed,
                           tuple(range(first, min(first + per_job, count))),
                           f"shard-{split}-{first:05d}", known)
                 for first in range(0, count, per_job)]
        phases.append(Phase(f"pack-{split}", plans))
        phases.append(Phase(f"manifest-{split}", [ShardPlan(
            cfg, split, folder, shard_size, seed, (), f"manifest-{split}", known)],
            after=(f"pack-{split}",)))
    return phases
