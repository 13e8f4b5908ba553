"""Process-group facts the engine needs (the SLURM launcher fills them from submitit)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DistInfo:
    """Rank and world size of this process; the defaults describe a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0
