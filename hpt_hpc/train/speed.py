"""The training step's speed switches (config section ``compute``) in one place.

* precision: bf16 autocast (``auto``: on CUDA GPUs with bf16, fp32 elsewhere); the
  methods keep their losses in fp32 (e.g. :meth:`hpt_hpc.ssl.MoCo.forward`). No loss
  scaler is needed for bf16.
* channels_last: model and input batches in NHWC (``null``: on CUDA only).
* fused_optimizer: SGD with the fused kernel (``auto``: on CUDA), the multi-tensor
  ``foreach`` path (``auto`` on CPU) or the per-parameter loop (``off``).
* compile: ``torch.compile`` of the method's encoders (``compiled_modules``; in place:
  state_dict keys unchanged).
* accumulate: the rank batch from the loader is split into that many micro-batches, each
  forward/backward on its own, one optimiser step (and one momentum update) per loader
  batch; the method is told which micro-batch is first and last (``micro_batch``: MoCo
  enqueues the keys of every micro-batch after the last one, so every micro-batch sees
  the queue one large batch would have seen). Steps, learning rate, checkpoints and
  resume are unchanged (one loader batch per step). BatchNorm statistics are per
  micro-batch, as they are per GPU in DDP.
* non_blocking: host-to-device copies of the batches do not wait (with pinned memory).
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence, Tuple

import torch

from ..errors import HptError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepSpeed:
    """The ``compute`` section resolved for one device."""

    device_type: str = "cpu"
    autocast_dtype: Optional[torch.dtype] = None  # None: fp32
    channels_last: bool = False
    optimizer_impl: str = "foreach"  # fused | foreach | off
    compile: bool = False
    accumulate: int = 1
    non_blocking: bool = True

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype == torch.bfloat16 else "fp32"

    def describe(self) -> str:
        return (f"{self.precision}, channels_last={self.channels_last}, "
                f"optimizer kernel={self.optimizer_impl}, compile={self.compile}, "
                f"accumulate={self.accumulate}")


def _bf16_ok(device: torch.device) -> bool:
    return device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported())


def _fused_ok(device: torch.device) -> bool:
    from torch.optim.optimizer import _get_fused_kernels_supported_devices
    return device.type in _get_fused_kernels_supported_devices()


def resolve_speed(compute: Any, device: torch.device) -> StepSpeed:
    """A :class:`StepSpeed` from a ``ComputeConfig`` and the training device."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    precision = compute.precision
    if precision == "auto":
        precision = "bf16" if cuda and _bf16_ok(device) else "fp32"
    elif precision == "bf16" and not _bf16_ok(device):
        warnings.warn(f"compute.precision bf16: {device} has no bf16 support; using fp32")
        precision = "fp32"
    impl = compute.fused_optimizer
    if impl == "auto":
        impl = "fused" if cuda and _fused_ok(device) else "foreach"
    elif impl == "fused" and not _fused_ok(device):
        warnings.warn(f"compute.fused_optimizer fused: no fused SGD on {device}; using foreach")
        impl = "foreach"
    channels_last = compute.channels_last if compute.channels_last is not None else cuda
    return StepSpeed(device.type, torch.bfloat16 if precision == "bf16" else None,
                     bool(channels_last), impl, bool(compute.compile), int(compute.accumulate),
                     bool(compute.non_blocking))


def autocast(speed: StepSpeed):
    """The forward pass's autocast context (a no-op in fp32)."""
    if speed.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(speed.device_type, dtype=speed.autocast_dtype)


def prepare_model(model: torch.nn.Module, speed: StepSpeed) -> torch.nn.Module:
    """Memory format and (optionally) compiled encoders, in place; returns ``model``.

    On CUDA also switches on ``cudnn.benchmark`` (fixed input sizes: the fastest kernels).
    """
    if speed.device_type == "cuda":
        torch.backends.cudnn.benchmark = True
    if speed.channels_last:
        model.to(memory_format=torch.channels_last)
    if speed.compile:
        for module in model.compiled_modules():
            module.compile()
    return model


def to_device(batch: torch.Tensor, device: torch.device, speed: StepSpeed) -> torch.Tensor:
    """A loader batch on ``device`` in the step's memory format."""
    batch = batch.to(device, non_blocking=speed.non_blocking)
    if speed.channels_last and batch.dim() == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def _impl_flags(impl: str) -> dict:
    return {"fused": impl == "fused" or None, "foreach": impl == "foreach"}


DECAYED = "hpt_decayed"  # a parameter group's flag: its weight decay follows the schedule


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, momentum: float,
                   weight_decay: float, speed: StepSpeed, kind: str = "sgd",
                   decay_norms_and_biases: bool = True) -> torch.optim.Optimizer:
    """SGD with momentum, or AdamW (``kind``: ``optim.optimizer``; ``momentum`` is SGD's),
    using the configured kernel (fused, foreach or per-parameter). Without
    ``decay_norms_and_biases``, tensors of <= 1 dimension (biases, norm weights) form a
    second group without weight decay (DINO's ``get_params_groups``); the group whose
    decay follows :func:`weight_decay_at` is flagged :data:`DECAYED`."""
    params = list(params)
    if decay_norms_and_biases:
        groups = [{"params": params, DECAYED: True}]
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], DECAYED: True},
                  {"params": [p for p in params if p.ndim <= 1], DECAYED: False,
                   "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay,
                                 **_impl_flags(speed.optimizer_impl))
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           **_impl_flags(speed.optimizer_impl))


def weight_decay_at(step: int, total: int, start: float, end: Optional[float]) -> float:
    """``start`` (``end`` None), or a cosine from ``start`` at step 0 to ``end`` at step
    ``total`` (DINO's ``cosine_scheduler`` over steps)."""
    if end is None:
        return start
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * step / max(1, total)))


@torch.no_grad()
def clip_gradients(params: Iterable[torch.nn.Parameter], max_norm: float) -> None:
    """Scale each parameter's gradient down to L2 norm ``max_norm`` where it is larger
    (per parameter, as DINO clips: ``g * min(1, max_norm / (|g| + 1e-6))``)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    norms = torch._foreach_norm(grads)
    scales = [torch.clamp(max_norm / (n + 1e-6), max=1.0) for n in norms]
    torch._foreach_mul_(grads, scales)


def set_optimizer_impl(optimizer: torch.optim.Optimizer, speed: StepSpeed) -> None:
    """Re-apply the kernel choice after ``load_state_dict`` (which restores the saved one)."""
    for group in optimizer.param_groups:
        group.update(_impl_flags(speed.optimizer_impl))


def check_accumulation(rank_batch: int, accumulate: int, stage: str) -> None:
    """Fail before any work when the rank batch does not split into micro-batches of >= 2."""
    if accumulate > 1 and (rank_batch % accumulate or rank_batch // accumulate < 2):
        raise HptError(f"stage '{stage}': compute.accumulate {accumulate} must divide the "
                       f"per-rank batch {rank_batch} into micro-batches of at least 2 images")


def train_step(net: torch.nn.Module, method: Any, views: Sequence[torch.Tensor],
               speed: StepSpeed) -> Tuple[torch.Tensor, Any]:
    """Forward and backward of one optimiser step (gradients accumulated, not applied).

    ``net`` is the ssl method ``method`` or its DDP wrapper, called with the step's views.
    Micro-batches split every view (any number, global and local sizes) alike: micro-batch
    ``k`` holds the same images in every view.
    Returns the step's mean loss (detached) and the last micro-batch's forward result.
    Under DDP, gradients are all-reduced once, on the last micro-batch.
    """
    parts = speed.accumulate
    if parts == 1:
        with autocast(speed):
            out = net(*views, **method.micro_batch(True, True))
        loss = method.loss_of(out)
        loss.backward()
        return loss.detach(), out
    total = None
    chunks = zip(*(view.chunk(parts) for view in views))
    for index, micro in enumerate(chunks):
        last = index == parts - 1
        no_sync = getattr(net, "no_sync", None)
        sync = contextlib.nullcontext() if last or no_sync is None else no_sync()
        with sync:
            with autocast(speed):
                out = net(*micro, **method.micro_batch(index == 0, last))
            loss = method.loss_of(out)
            (loss / parts).backward()
        total = loss.detach() if total is None else total + loss.detach()
    return total / parts, out
