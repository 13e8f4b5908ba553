"""Where a stage starts and which method it is: for plain configs (the planner) and for
a checkpoint that is evaluated on its own (``hpt-hpc probe``/``finetune``/``embed``).
Checkpoints record their method and step budget (:func:`~hpt_hpc.models.weights.
stage_checkpoint`); for ones written before that, both follow from the recorded stage,
variant and init through the method table, as the planner derives them."""
from __future__ import annotations

from typing import Any, Optional

from ..config import InitRef
from .methods import filed_steps, stage_method

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
        from ..models.loading import checkpoint_info  # torch: only for file inits
        try:
            return checkpoint_info(ref.value).stage or CHECKPOINT
        except (OSError, ValueError):  # missing or unreadable: the preflight says so
            return CHECKPOINT
    return CHECKPOINT


def checkpoint_method(info: Any) -> str:
    """The method tag of a toolkit checkpoint (a :class:`~hpt_hpc.models.CheckpointInfo`):
    recorded, else derived from its stage, variant and configured init."""
    if info.method:
        return info.method
    section = info.stage_config
    start = starting_point(InitRef.parse(section.get("init")), read_files=False)
    return stage_method(info.stage or "", info.variant or "full", start,
                        bool(section.get("train_head", True)), info.ssl)


def checkpoint_steps(info: Any) -> int:
    """The step budget a toolkit checkpoint is filed under: recorded, else its steps when
    its method has a budget (0: BN statistics only); a checkpoint saved along the way
    (:func:`checkpoint_along`): the steps it had."""
    if checkpoint_along(info):
        return info.step
    if info.target_steps is not None:
        return info.target_steps
    return filed_steps(checkpoint_method(info), info.variant or "full", info.step)


def checkpoint_along(info: Any) -> int:
    """The steps of the run a checkpoint was saved along (a kept ``step-<n>.pt``, a
    resume point): its recorded budget when it holds fewer steps than its stage trains
    and its method has a budget; 0 for a stage's final checkpoint."""
    run = info.target_steps if info.target_steps is not None else info.total_steps
    if not 0 < info.step < info.total_steps or not filed_steps(
            checkpoint_method(info), info.variant or "full", run):
        return 0
    return run
