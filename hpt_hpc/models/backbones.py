"""Encoders: a backbone (pooled features) plus a projection head named ``fc``.

Two families behind one shape:

* the built-in ResNets (``model.arch: resnet18 | resnet50``, :mod:`.resnet`): the encoder
  *is* the torchvision-layout ResNet whose ``fc`` is the head, so state-dict keys are
  torchvision's (``conv1.weight`` ... ``fc.0.weight``), as in the official MoCo code;
* timm's models (``model.arch: timm:<name>``, e.g. ``timm:resnet50``,
  ``timm:vit_small_patch16_224``, ``timm:convnext_tiny``): :class:`TimmEncoder` holds the
  timm model (classifier removed, ``num_classes=0``) as ``backbone`` and the head as
  ``fc``; the backbone's keys are timm's own under ``backbone.``. Input channels go
  through timm's own adaptation (``in_chans``); models that take an input size (ViTs) get
  ``data.image_size``; ``model.timm_kwargs`` reach ``timm.create_model`` unchanged.

Every encoder answers :func:`backbone_state_dict` (the backbone's weights with its
library's keys: what exports and foreign checkpoints hold), :func:`load_backbone_state`
and :func:`backbone_modules` (the named sub-modules of the backbone, head excluded).
An encoder for evaluation drops its head: ``encoder.fc = nn.Identity()``.

:func:`block_layout` is the one place that knows each family's *blocks* (what variants
``last-blocks`` and ``lora`` count from the end) and the layers LoRA adapts by default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn

from ..config.schema import TIMM_PREFIX
from ..errors import ConfigError
from .resnet import ResNetBackbone, build_resnet, describe_arch

HEAD = "fc"  # the head's attribute (and state-dict prefix ``fc.``) in every encoder


def is_timm(arch: str) -> bool:
    """True for ``timm:<name>`` architectures."""
    return str(arch).startswith(TIMM_PREFIX)


def timm_name(arch: str) -> str:
    """``timm:resnet50`` -> ``resnet50``."""
    return str(arch)[len(TIMM_PREFIX):]


class TimmEncoder(nn.Module):
    """A timm model without its classifier (``backbone``) followed by a head (``fc``).
    ``create_kwargs``: the keyword arguments of ``timm.create_model`` that built the
    backbone (besides its name and ``pretrained=False``), so that
    ``timm.create_model(name, pretrained=False, **create_kwargs)`` builds it again."""

    def __init__(self, backbone: nn.Module, arch: str,
                 create_kwargs: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.arch = arch
        self.create_kwargs = dict(create_kwargs or {})
        self.feature_dim = int(backbone.num_features)
        self.fc: nn.Module = nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (timm's ``forward`` with ``num_classes=0``)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x))

    def extra_repr(self) -> str:
        return f"arch={self.arch}, feature_dim={self.feature_dim}"


def create_timm(name: str, in_channels: int, image_size: int,
                kwargs: Optional[Dict[str, Any]] = None) -> Tuple[nn.Module, Dict[str, Any]]:
    """``timm.create_model(name, pretrained=False, num_classes=0, in_chans=...)`` and the
    keyword arguments that built it (``pretrained`` aside); models whose constructor takes
    ``img_size`` (ViTs and kin) get ``image_size`` unless ``kwargs`` sets it. Weights
    never come from the network here (see ``init``)."""
    import timm
    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise ConfigError(f"model.arch: timm has no model '{name}'{hint}")
    args = {"num_classes": 0, "in_chans": int(in_channels), **(kwargs or {})}
    if "img_size" not in args:
        try:
            sized = {**args, "img_size": int(image_size)}
            return timm.create_model(name, pretrained=False, **sized), sized
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, pretrained=False, **args), args


def build_encoder(arch: str, width: float = 1.0, small_stem: bool = False,
                  in_channels: int = 3, stem_stride: int = 1, image_size: int = 224,
                  timm_kwargs: Optional[Dict[str, Any]] = None) -> nn.Module:
    """The encoder of ``arch`` with an identity head (set ``encoder.fc`` to the head).
    ``width``, ``small_stem`` and ``stem_stride`` apply to the built-in ResNets only."""
    if is_timm(arch):
        model, kwargs = create_timm(timm_name(arch), in_channels, image_size, timm_kwargs)
        return TimmEncoder(model, arch, kwargs)
    return build_resnet(arch, width, small_stem, in_channels, stem_stride=stem_stride)


def encoder_from_config(model_cfg: Any, image_size: int) -> nn.Module:
    """:func:`build_encoder` from a ``ModelConfig`` (``image_size``: ``data.image_size``)."""
    return build_encoder(model_cfg.arch, model_cfg.width, model_cfg.small_stem,
                         model_cfg.in_channels, model_cfg.stem_stride, image_size,
                         getattr(model_cfg, "timm_kwargs", None))


def _backbone_prefix(encoder: nn.Module) -> str:
    return "backbone." if isinstance(encoder, TimmEncoder) else ""


def backbone_state_dict(encoder: nn.Module) -> Dict[str, torch.Tensor]:
    """The backbone's weights with its library's keys (torchvision's for the built-in
    ResNets, timm's for timm models): the encoder's state without the head."""
    prefix = _backbone_prefix(encoder)
    return {k[len(prefix):]: v for k, v in encoder.state_dict().items()
            if k.startswith(prefix) and not k.startswith(f"{HEAD}.")}


def encoder_keys(encoder: nn.Module, backbone_keys: Dict[str, Any]) -> Dict[str, Any]:
    """Backbone keys (library layout) -> the encoder's own keys."""
    prefix = _backbone_prefix(encoder)
    return {f"{prefix}{k}": v for k, v in backbone_keys.items()}


def backbone_modules(encoder: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """``(name, module)`` of every sub-module of the backbone (the head excluded)."""
    for name, module in encoder.named_modules():
        if name != HEAD and not name.startswith(f"{HEAD}."):
            yield name, module


def first_conv(encoder: nn.Module) -> str:
    """The name (library keys) of the layer that reads the input image: ``conv1`` for
    ResNets, timm's ``pretrained_cfg['first_conv']`` (``patch_embed.proj``, ``stem.0``...)."""
    if isinstance(encoder, TimmEncoder):
        return (getattr(encoder.backbone, "pretrained_cfg", None) or {}).get("first_conv") \
            or ""
    return "conv1"


def adapt_to_encoder(encoder: nn.Module, state: Dict[str, torch.Tensor]
                     ) -> Tuple[Dict[str, torch.Tensor], list]:
    """Foreign backbone weights adapted to ``encoder`` the way timm adapts pretrained
    weights to a model (``timm.create_model(..., pretrained=True)``): the model family's
    own checkpoint filter (a ViT's position and patch embeddings resampled to the input
    size and patch size) and ``adapt_input_conv`` for another number of input channels
    (3-channel weights on grey or multi-band images). Returns the state and one note per
    tensor whose shape changed; tensors that fit already are left alone."""
    import sys

    from timm.models import adapt_input_conv
    before = {k: tuple(v.shape) for k, v in state.items()}
    if isinstance(encoder, TimmEncoder):
        model = encoder.backbone
        fit = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if fit is not None:
            state = dict(fit(dict(state), model))
    own = backbone_state_dict(encoder)
    key = f"{first_conv(encoder)}.weight"
    given, wanted = state.get(key), own.get(key)
    if given is not None and wanted is not None and given.ndim == 4 and \
            given.shape[1] != wanted.shape[1] and given.shape[0] == wanted.shape[0]:
        state = {**state, key: adapt_input_conv(int(wanted.shape[1]), given)}
    notes = [f"{k}: {before[k]} -> {tuple(v.shape)}" for k, v in state.items()
             if k in before and tuple(v.shape) != before[k]]
    return state, notes


def describe_encoder(encoder: nn.Module) -> str:
    """One line for error messages: the architecture and its feature width."""
    if isinstance(encoder, ResNetBackbone):
        return describe_arch(encoder.arch, encoder.width, encoder.small_stem,
                             encoder.in_channels, encoder.feature_dim)
    return f"{getattr(encoder, 'arch', type(encoder).__name__)} " \
           f"(feature_dim={encoder.feature_dim})"


def backbone_for_features(encoder: nn.Module) -> nn.Module:
    """``encoder`` without its head (in place): forward gives pooled features."""
    encoder.fc = nn.Identity()
    return encoder



@dataclass(frozen=True)
class BlockLayout:
    """A backbone's blocks in forward order (``(name in the encoder, module)``) and the
    layer names LoRA adapts inside a block unless told otherwise."""

    family: str
    blocks: List[Tuple[str, nn.Module]]
    lora_targets: Tuple[str, ...]


def _sequence(module: Any) -> bool:
    return isinstance(module, (nn.Sequential, nn.ModuleList))


def block_layout(encoder: nn.Module) -> BlockLayout:
    """The :class:`BlockLayout` of ``encoder``'s backbone, by family:

    * ResNets (built-in, timm's): the residual blocks of ``layer1`` .. ``layer4``; LoRA on
      their convolutions ``conv1``, ``conv2``, ``conv3`` (the shortcut's stays frozen);
    * ViTs (timm's ``blocks``): the transformer blocks; LoRA on the attention's fused
      ``qkv`` projection (ExPLoRA adapts Q and V; timm fuses Q, K and V in one layer);
    * ConvNeXts (timm's ``stages[i].blocks``): every stage's blocks; LoRA on the MLP's
      ``fc1``/``fc2`` (Linear, or 1x1 convolutions with ``conv_mlp``).

    Layers outside the blocks (stems, patch and position embeddings, ConvNeXt's
    downsampling between stages) are never a block. Another structure is a
    :class:`ConfigError`."""
    prefix = _backbone_prefix(encoder)
    root = encoder.backbone if isinstance(encoder, TimmEncoder) else encoder
    layers = [getattr(root, f"layer{i}", None) for i in range(1, 5)]
    if all(_sequence(layer) for layer in layers):
        return BlockLayout("resnet", [(f"{prefix}layer{i}.{j}", block)
                                      for i, layer in enumerate(layers, 1)
                                      for j, block in enumerate(layer)],
                           ("conv1", "conv2", "conv3"))
    if _sequence(getattr(root, "blocks", None)):
        return BlockLayout("vit", [(f"{prefix}blocks.{j}", block)
                                   for j, block in enumerate(root.blocks)], ("qkv",))
    stages = getattr(root, "stages", None)
    if _sequence(stages) and all(_sequence(getattr(s, "blocks", None)) for s in stages):
        return BlockLayout("convnext", [(f"{prefix}stages.{i}.blocks.{j}", block)
                                        for i, stage in enumerate(stages)
                                        for j, block in enumerate(stage.blocks)],
                           ("fc1", "fc2"))
    raise ConfigError(f"model.arch {getattr(encoder, 'arch', type(encoder).__name__)}: no "
                      f"known block structure (ResNets: layer1-4, ViTs: blocks, ConvNeXts: "
                      f"stages[i].blocks), which variants last-blocks and lora need; use "
                      f"full or bn")
