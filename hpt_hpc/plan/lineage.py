"""Where a stage starts, for the method table (:func:`~hpt_hpc.plan.methods.stage_method`):
a random init, an upstream stage, or another pretrained checkpoint."""
from __future__ import annotations

from typing import Optional

from ..config import InitRef

CHECKPOINT = "checkpoint"  # a start that is a pretrained checkpoint of unknown stage


def starting_point(ref: InitRef, handed_from: Optional[str] = None,
                   read_files: bool = True) -> Optional[str]:
    """Where a stage with init ``ref`` starts: None (random init), the stage its init comes
    from (a ``stage:`` reference, the chain's previous stage ``handed_from``, the stage
    recorded in a toolkit checkpoint file when ``read_files``), else ``checkpoint``."""
    if ref.is_random:
        return None
    if handed_from:
        return handed_from
    if ref.kind == "stage":
        return ref.value
    if ref.kind == "file" and read_files:
        from ..models.weights import load_checkpoint  # torch: only for file inits
        try:
            state = load_checkpoint(ref.value)
        except (OSError, ValueError):  # missing or unreadable: the preflight says so
            return CHECKPOINT
        return (state.get("stage") if isinstance(state, dict) else None) or CHECKPOINT
    return CHECKPOINT
