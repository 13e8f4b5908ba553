"""``torch.distributed`` helpers the ssl methods share (no-ops in one process)."""
from __future__ import annotations

import torch
import torch.distributed as dist


def dist_world_size() -> int:
    """World size of the default process group, 1 when not distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather ``tensor`` from every rank and concatenate along dim 0 (no gradient).

    Every rank must pass a tensor of the same shape.
    """
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor.contiguous())
    return torch.cat(gathered, dim=0)
