"""Initial weights: read a checkpoint of any accepted layout as backbone weights with
their library's keys (plus a projection head and a target encoder where it has them), and
load them into an encoder (:mod:`.backbones`) with every mismatch named.

Layouts (:func:`read_weights`):

* ``hpt-hpc``: this toolkit's checkpoint; the online encoder's state is under its
  ``backbone_key`` (``encoder_q.`` in checkpoints of every version so far), the target's
  under ``target_key`` (``encoder_k.``), and ``ssl`` names the method that wrote it
  (``moco-v2`` when absent); LoRA adapters (variant ``lora``) are merged into plain
  weights here, the one place (:func:`.lora.merge_adapters`);
* ``moco``: official MoCo ``{"state_dict": {"module.encoder_q.*": ...}}`` (or a bare MoCo
  state dict): backbone and head;
* ``openselfsup``: OpenSelfSup/HPT ``{"state_dict": backbone keys}``, optionally prefixed
  ``backbone.`` (other entries such as the neck are ignored);
* ``torchvision``: a plain state dict (torchvision's or timm's keys); ``fc.*`` is a
  classifier and dropped.

Files are torch files (read with ``weights_only``) or ``.safetensors`` files (a plain
tensor dict: the ``torchvision`` layout; how timm and Hugging Face hub repos ship
weights), told apart by their content.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .backbones import (HEAD, TimmEncoder, adapt_to_encoder, backbone_state_dict,
                        describe_encoder, encoder_keys, is_timm)
from .lora import checkpoint_scale, is_adapter_key, merge_adapters
from .weights import (CHECKPOINT_FORMAT, CheckpointReadError, IncompatibleCheckpointError,
                      is_safetensors, load_checkpoint, load_safetensors)

DEFAULT_SSL = "moco-v2"  # the method of checkpoints written before ``ssl`` was recorded
DEFAULT_BACKBONE_KEY, DEFAULT_TARGET_KEY = "encoder_q.", "encoder_k."
_MAX_LISTED = 10


@dataclass
class Weights:
    """What a checkpoint file offers: backbone weights with library keys, a head (``fc``
    keys without the prefix; empty when none), a target encoder's state (encoder keys;
    toolkit checkpoints only) and, for toolkit checkpoints, the ssl method that wrote it."""

    layout: str
    backbone: Dict[str, torch.Tensor]
    head: Dict[str, torch.Tensor] = field(default_factory=dict)
    target: Optional[Dict[str, torch.Tensor]] = None
    ssl: Optional[str] = None
    ignored: int = 0


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _select(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _split_head(encoder_state: dict) -> Tuple[dict, dict]:
    head = _select(encoder_state, f"{HEAD}.")
    return {k: v for k, v in encoder_state.items() if not k.startswith(f"{HEAD}.")}, head


def classify(obj: Any, path: str) -> Weights:
    """The :class:`Weights` of a loaded checkpoint object (see the module docstring)."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj.get("model")
        if not isinstance(state, dict):
            raise CheckpointReadError(f"{path}: {CHECKPOINT_FORMAT} checkpoint without a "
                                      f"'model' dict")
        state = _strip(state, "module.")
        if any(is_adapter_key(k) for k in state):  # variant lora: merged here, only here
            state = merge_adapters(state, checkpoint_scale(obj, path))
        online = _select(state, obj.get("backbone_key") or DEFAULT_BACKBONE_KEY)
        target = _select(state, obj.get("target_key") or DEFAULT_TARGET_KEY)
        backbone, head = _split_head(online)
        arch = ((obj.get("config") or {}).get("model") or {}).get("arch", "")
        if is_timm(arch):
            backbone = _select(backbone, "backbone.")
        return Weights("hpt-hpc", backbone, head, target or None,
                       obj.get("ssl") or DEFAULT_SSL, len(state) - len(online) - len(target))
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = _strip(obj["state_dict"], "module.")
        if any(key.startswith("encoder_q.") for key in state):
            online = _select(state, "encoder_q.")
            return Weights("moco", *_split_head(online), ignored=len(state) - len(online))
        if any(key.startswith("backbone.") for key in state):
            backbone = _select(state, "backbone.")
        else:
            backbone = dict(state)
        backbone = {k: v for k, v in backbone.items() if not k.startswith(f"{HEAD}.")}
        return Weights("openselfsup", backbone, ignored=len(state) - len(backbone))
    if _is_tensor_dict(obj):
        state = _strip(obj, "module.")
        if any(key.startswith("encoder_q.") for key in state):  # a bare MoCo state_dict
            online = _select(state, "encoder_q.")
            return Weights("moco", *_split_head(online), ignored=len(state) - len(online))
        backbone = {k: v for k, v in state.items() if not k.startswith(f"{HEAD}.")}
        return Weights("torchvision", backbone, ignored=len(state) - len(backbone))
    keys = sorted(obj)[:_MAX_LISTED] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointReadError(
        f"{path}: unrecognised checkpoint layout (top level: {keys}); expected a "
        f"'{CHECKPOINT_FORMAT}' checkpoint, an official MoCo or OpenSelfSup/HPT file with "
        f"'state_dict', or a torchvision ResNet state_dict")


def read_file(path: str) -> Any:
    """The object of a torch checkpoint (``weights_only``) or the tensor dict of a
    safetensors file (safe by construction); errors name ``path``."""
    path = os.fspath(path)
    if not os.path.isfile(path) or not is_safetensors(path):
        return load_checkpoint(path)
    return load_safetensors(path)[0]


def read_weights(path: str) -> Weights:
    """:func:`classify` of the checkpoint file ``path`` (:func:`read_file`)."""
    return classify(read_file(path), os.fspath(path))


def _listing(items: list) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def compare(expected: dict, given: dict) -> Tuple[list, list, list]:
    """Missing, unexpected and shape-mismatched keys (``num_batches_tracked`` may be absent)."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items()
                  if k in given and tuple(given[k].shape) != tuple(v.shape)]
    return missing, unexpected, mismatched


def classifier_prefixes(encoder: nn.Module) -> Tuple[str, ...]:
    """Key prefixes of the classifier a library's full model has and the backbone lacks
    (dropped when such weights are loaded: ``fc.`` for ResNets, timm's ``classifier``)."""
    if isinstance(encoder, TimmEncoder):
        name = (getattr(encoder.backbone, "pretrained_cfg", None) or {}).get("classifier")
        names = name if isinstance(name, (list, tuple)) else [name] if name else []
        return tuple(f"{n}." for n in names)
    return ()


def load_backbone_into(encoder: nn.Module, backbone: Dict[str, torch.Tensor], source: str,
                       strict: bool = True, adapt: bool = False) -> Dict[str, Any]:
    """Copy backbone weights (library keys) into ``encoder``'s backbone.

    Keys must match exactly (missing ``num_batches_tracked`` buffers tolerated; a
    library classifier's keys are dropped); otherwise
    :class:`IncompatibleCheckpointError` names the missing, unexpected and mismatched
    keys, unless ``strict`` is False and some tensors fit (then those load and the rest
    is reported). ``adapt``: weights of another input size or channel count are first
    adapted as timm adapts pretrained weights (:func:`~.backbones.adapt_to_encoder`), each
    change listed under ``adapted``. Returns ``loaded_keys`` (of ``expected_keys``;
    BatchNorm's ``num_batches_tracked`` counters not counted), ``missing_keys``,
    ``unexpected_keys``, ``shape_mismatches``, ``dropped_keys``, ``adapted``.
    """
    drop = classifier_prefixes(encoder)
    dropped = [k for k in backbone if drop and k.startswith(drop)]
    backbone = {k: v for k, v in backbone.items() if k not in dropped}
    own = backbone_state_dict(encoder)
    missing, unexpected, mismatched = compare(own, backbone)
    adapted: list = []
    if adapt and mismatched:
        backbone, adapted = adapt_to_encoder(encoder, backbone)
        missing, unexpected, mismatched = compare(own, backbone)
    fitting = {k: v for k, v in backbone.items()
               if k in own and tuple(v.shape) == tuple(own[k].shape)}

    def counted(keys):  # tensors, not BatchNorm's step counters (which may be absent)
        return len([k for k in keys if not k.endswith("num_batches_tracked")])

    if (missing or unexpected or mismatched) and (strict or not fitting):
        raise IncompatibleCheckpointError(
            f"{source} does not fit the model's backbone {describe_encoder(encoder)}: "
            f"{counted(fitting)} of {counted(own)} tensors fit ({len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(mismatched)} mis-shaped)"
            f"\n  missing keys ({len(missing)}): {_listing(missing)}"
            f"\n  unexpected keys ({len(unexpected)}): {_listing(unexpected)}"
            f"\n  shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
    encoder.load_state_dict(encoder_keys(encoder, fitting), strict=False)
    return {"loaded_keys": counted(fitting), "expected_keys": counted(own),
            "missing_keys": missing, "unexpected_keys": unexpected,
            "shape_mismatches": mismatched, "dropped_keys": len(dropped),
            "adapted": adapted}


def load_head_into(encoder: nn.Module, head: Dict[str, torch.Tensor]) -> bool:
    """Load a projection head (``fc`` keys without the prefix) when every key and shape
    fits; returns whether it loaded."""
    own = {k: v for k, v in _select(encoder.state_dict(), f"{HEAD}.").items()}
    if not head or any(compare(own, head)):
        return False
    encoder.load_state_dict({f"{HEAD}.{k}": v for k, v in head.items()}, strict=False)
    return True


def load_target_into(target: nn.Module, state: Optional[Dict[str, torch.Tensor]]) -> bool:
    """Load a target encoder's state (encoder keys) when every key and shape fits."""
    if not state or any(compare(target.state_dict(), state)):
        return False
    target.load_state_dict(state, strict=False)
    return True


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint file says about itself: its ``layout`` (hpt-hpc, moco, openselfsup,
    torchvision) and, for the toolkit's own, the stage that wrote it. ``method``, ``label``
    and ``target_steps`` are None in checkpoints written before they were recorded;
    ``stage_config`` is that stage's section of the recorded config."""

    layout: str
    stage: Optional[str] = None
    variant: Optional[str] = None
    method: Optional[str] = None
    label: Optional[str] = None
    step: int = 0
    total_steps: int = 0
    target_steps: Optional[int] = None
    run_id: Optional[str] = None
    stage_config: Dict[str, Any] = field(default_factory=dict)
    ssl: Optional[str] = None  # the ssl method that wrote it (toolkit checkpoints)

    @property
    def is_toolkit(self) -> bool:
        return self.layout == "hpt-hpc"


def _header(path: str) -> Any:
    """The checkpoint's object, tensors memory-mapped (not read) where the file allows."""
    if is_safetensors(path):
        return read_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a legacy (non-zip) file: read it whole
        return load_checkpoint(path)


def checkpoint_info(path: str) -> CheckpointInfo:
    """The :class:`CheckpointInfo` of a checkpoint file; unreadable files and unknown
    layouts raise like :func:`load_checkpoint`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    obj = _header(path)
    layout = classify(obj, path).layout
    if layout != "hpt-hpc":
        return CheckpointInfo(layout)
    stage = obj.get("stage")
    stages = (obj.get("config") or {}).get("stages") or {}
    steps = obj.get("target_steps")
    return CheckpointInfo(layout, stage, obj.get("variant"), obj.get("method") or None,
                          obj.get("label") or None, int(obj.get("step") or 0),
                          int(obj.get("total_steps") or 0),
                          None if steps is None else int(steps),
                          obj.get("tracker_run_id") or None,
                          dict(stages.get(stage) or {}), obj.get("ssl") or DEFAULT_SSL)
