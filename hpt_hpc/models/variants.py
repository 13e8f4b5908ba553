"""Training variants of an HPT stage and BatchNorm statistics re-estimation, for the
online encoder of any ssl method (backbone + head ``fc``, :mod:`.backbones`) of any
family (ResNets, ViTs, ConvNeXts). From least to most trained:

* ``bn-stats`` (Base): nothing is optimised; only BN running statistics are re-estimated
  (see :func:`reestimate_bn_stats`). A backbone without BatchNorm (ViT, ConvNeXt) keeps
  its weights unchanged: Base is then the base model itself.
* ``bn`` (HPT-BN): the affine weight/bias of every normalisation layer of the backbone
  (BatchNorm, LayerNorm, GroupNorm, RMSNorm: :func:`is_norm`) and, with ``train_head``
  (the default, as the official HPT code: OpenSelfSup's ``frozen_stages=4,
  norm_train=True`` freezes the backbone but not the neck), the projection head; every
  other layer is frozen. BN running statistics still update in train mode.
* ``last-blocks`` (HPT-LB): ``bn`` plus every parameter of the backbone's last ``blocks``
  blocks (:func:`hpt_hpc.models.backbones.block_layout`); ``blocks: 0`` is ``bn``.
* ``lora`` (HPT-LoRA, the ExPLoRA recipe): ``last-blocks`` plus LoRA adapters on the
  frozen blocks (:mod:`.lora`; the method adds them before this is called).
* ``full`` / ``scratch``: every parameter of the encoder (backbone and head) is trained;
  the two differ only in their initial weights, which the training engine chooses.

Layers outside the blocks (stems, patch and position embeddings, ConvNeXt's
downsampling) train only in ``full``/``scratch`` (their norms in every variant but
``bn-stats``).
"""
from __future__ import annotations

import importlib.util
import sys
from typing import Iterable, List

import torch
from torch import nn

from ..config.schema import BLOCK_VARIANTS, VARIANTS
from ..errors import ConfigError
from .backbones import HEAD, backbone_modules, block_layout, encoder_from_config
from .lora import adapted_layers, is_adapter_key

TRAINS_ALL = ("full", "scratch")
_TORCH_NORMS = tuple(t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
                                 getattr(nn, "RMSNorm", None)) if t is not None)
_TIMM_NORMS = ("RmsNorm", "RmsNorm2d", "RmsNormFp32", "RmsNorm2dFp32", "SimpleNorm",
               "SimpleNorm2d", "SimpleNormFp32", "SimpleNorm2dFp32")  # not torch subclasses


def is_bn(module: nn.Module) -> bool:
    """True for any BatchNorm layer (``BatchNorm1d/2d/3d``, ``SyncBatchNorm``)."""
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def is_norm(module: nn.Module) -> bool:
    """True for a normalisation layer: BatchNorm (and InstanceNorm), LayerNorm (timm's
    ``LayerNorm2d`` too), GroupNorm, RMSNorm (torch's, timm's)."""
    if isinstance(module, _TORCH_NORMS):
        return True
    timm_norm = sys.modules.get("timm.layers.norm")  # loaded whenever a timm model is
    return timm_norm is not None and isinstance(module, tuple(
        getattr(timm_norm, name) for name in _TIMM_NORMS if hasattr(timm_norm, name)))


def last_blocks(encoder: nn.Module, blocks: int) -> list:
    """``(name, module)`` of the backbone's last ``blocks`` blocks."""
    layout = block_layout(encoder).blocks
    if not 0 <= blocks <= len(layout):
        raise ConfigError(f"blocks: {blocks}, but {getattr(encoder, 'arch', 'the backbone')} "
                          f"has {len(layout)} blocks")
    return layout[len(layout) - blocks:]


def configure_variant(encoder: nn.Module, variant: str, train_head: bool = True,
                      blocks: int = 1) -> List[nn.Parameter]:
    """Set ``requires_grad`` of ``encoder``'s parameters for ``variant`` and return those
    to optimise, in the encoder's parameter order (the caller freezes everything else,
    e.g. momentum targets). ``blocks``: variants ``last-blocks`` and ``lora``.

    Call this on the unwrapped model *before* wrapping it in DistributedDataParallel, which
    records which parameters require gradients when it is constructed.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    chosen: List[nn.Parameter] = []
    if variant in TRAINS_ALL:
        chosen = list(encoder.parameters())
    elif variant != "bn-stats":
        chosen = [p for _, module in backbone_modules(encoder) if is_norm(module)
                  for p in module.parameters(recurse=False)]
        if variant in BLOCK_VARIANTS:
            chosen += [p for _, block in last_blocks(encoder, blocks) for p in block.parameters()]
        if variant == "lora":
            adapters = [p for name, p in encoder.named_parameters() if is_adapter_key(name)]
            if not adapters:
                raise ValueError("variant lora: the encoder has no LoRA adapters (the ssl "
                                 "method adds them: SslMethod.trainable_parameters)")
            chosen += adapters
        if train_head:
            chosen += list(getattr(encoder, HEAD).parameters())
    ids = {id(p) for p in chosen}
    trainable = [p for p in encoder.parameters() if id(p) in ids]
    for p in encoder.parameters():
        p.requires_grad = id(p) in ids
    return trainable


def check_variant(model_cfg, image_size: int, stage: str, section) -> None:
    """Fail before any work when stage ``stage`` (its config ``section``) asks for blocks
    or adapters the backbone of ``model_cfg`` lacks (built on the meta device: no
    memory, no weights), or for adapters without peft; one :class:`ConfigError` naming
    the stage."""
    if section.variant not in BLOCK_VARIANTS:
        return
    if section.variant == "lora" and importlib.util.find_spec("peft") is None:
        raise ConfigError(f"stages.{stage}: variant lora needs peft: pip install "
                          f"'hpt-hpc[lora]'")
    with torch.device("meta"):
        encoder = encoder_from_config(model_cfg, image_size)
    try:
        last_blocks(encoder, section.blocks)
        if section.variant == "lora":
            adapted_layers(encoder, section.blocks, section.lora.targets)
    except ConfigError as exc:
        raise ConfigError(f"stages.{stage}: {exc}") from None


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
