"""Training variants of an HPT stage and BatchNorm statistics re-estimation, for the
online encoder of any ssl method (backbone + head ``fc``, :mod:`.backbones`).

* ``full`` / ``scratch``: every parameter of the encoder (backbone and head) is trained;
  the two differ only in their initial weights, which the training engine chooses.
* ``bn`` (HPT-BN): the affine weight/bias of the backbone's BatchNorm layers and,
  with ``train_head`` (the default, as the official HPT code: OpenSelfSup's
  ``frozen_stages=4, norm_train=True`` freezes the backbone but not the neck), the
  projection head; convolutions are frozen. Running statistics still update in train mode.
* ``bn-stats`` (Base): nothing is optimised; only BN running statistics are re-estimated
  (see :func:`reestimate_bn_stats`).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from ..config.schema import VARIANTS  # ("full", "bn", "bn-stats", "scratch")
from .backbones import HEAD, backbone_modules


def is_bn(module: nn.Module) -> bool:
    """True for any BatchNorm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def configure_variant(encoder: nn.Module, variant: str,
                      train_head: bool = True) -> list[nn.Parameter]:
    """Set ``requires_grad`` of ``encoder``'s parameters for ``variant`` and return those
    to optimise (the caller freezes everything else, e.g. momentum targets).

    Call this on the unwrapped model *before* wrapping it in DistributedDataParallel, which
    records which parameters require gradients when it is constructed.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    for p in encoder.parameters():
        p.requires_grad = False
    if variant in ("full", "scratch"):
        trainable = list(encoder.parameters())
    elif variant == "bn":
        trainable = []
        for _, module in backbone_modules(encoder):
            if is_bn(module):
                trainable += [p for p in (module.weight, module.bias) if p is not None]
        if train_head:
            trainable += list(getattr(encoder, HEAD).parameters())
    else:  # bn-stats
        trainable = []
    for p in trainable:
        p.requires_grad = True
    return trainable


def _first_tensor(batch):
    """The input tensor of a batch: the batch itself, or the first tensor inside it."""
    while isinstance(batch, (list, tuple)):
        if not batch:
            raise ValueError("empty batch")
        batch = batch[0]
    if isinstance(batch, dict):
        raise TypeError("dict batches are not supported; pass tensors or (tensor, ...) tuples")
    return batch


@torch.no_grad()
def reestimate_bn_stats(module: nn.Module, batches_iterable: Iterable, num_batches: int) -> int:
    """Recompute every BN layer's running statistics of ``module`` from data.

    Running stats are reset and averaged cumulatively (``momentum=None``) over at most
    ``num_batches`` batches, forwarded in train mode without gradients. A batch is a tensor or a
    tuple/list whose first (possibly nested) element is the input tensor, e.g. ``(images,
    labels)`` or ``((view_1, view_2), labels)``; it is moved to the module's device. BN momenta
    and each submodule's train/eval mode are restored afterwards. Returns the number of batches
    used. Pass the online encoder (not the method, whose forward updates its state), then
    let the targets follow (``SslMethod.sync_targets``).
    """
    bns = [m for m in module.modules() if is_bn(m)]
    if not bns:
        return 0
    modes = {m: m.training for m in module.modules()}
    momenta = {m: m.momentum for m in bns}
    first = next(iter(module.parameters()), None)
    if first is None:
        first = next(iter(module.buffers()))  # BN layers always have running-stat buffers
    device = first.device
    used = 0
    try:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None
        module.train()
        for batch in batches_iterable:
            if used >= num_batches:
                break
            module(_first_tensor(batch).to(device, non_blocking=True))
            used += 1
    finally:
        for bn, momentum in momenta.items():
            bn.momentum = momentum
        for m, training in modes.items():
            m.training = training
    return used
