"""LoRA adapters of variant ``lora`` (the ExPLoRA recipe: Khanna et al., ICML 2025: the
last block(s) train whole, low-rank adapters on the frozen blocks before them) through
peft, and their merge into plain weights.

Adapters are injected in place (``peft.inject_adapter_in_model``) into the Linear and
Conv2d (``groups=1``) layers of the frozen blocks whose names end with a target
(:func:`adapted_layers`; the family's targets: :func:`~hpt_hpc.models.backbones.
block_layout`). An adapted layer ``<name>`` keeps its frozen weight as
``<name>.base_layer.weight`` and gains ``<name>.lora_A.default.weight`` (``r x in``, a
convolution's kernel too) and ``<name>.lora_B.default.weight`` (``out x r``); its output
is ``base(x) + alpha / r * B(A(x))``, and ``B`` starts at zero (the stage starts at its
init's function). Checkpoints keep the adapters (a resumed stage continues them);
whatever reads a checkpoint as a backbone gets ``W + alpha / r * B A``
(:func:`merge_adapters`, called by :func:`hpt_hpc.models.loading.classify`; no peft
needed).
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

import torch
from torch import nn

from ..errors import ConfigError, HptError
from .backbones import block_layout
from .weights import CheckpointReadError

_A, _B, _BASE = ".lora_A.", ".lora_B.", ".base_layer."


def is_adapter_key(name: str) -> bool:
    """True for a LoRA adapter's parameter (``...lora_A.<adapter>.weight``, ``lora_B``)."""
    return _A in name or _B in name


def has_adapters(module: nn.Module) -> bool:
    """True when ``module`` holds LoRA adapters."""
    return any(is_adapter_key(name) for name, _ in module.named_parameters())


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d)
                                             and module.groups == 1)


def adapted_layers(encoder: nn.Module, blocks: int, targets: Sequence[str] = ()) -> List[str]:
    """Names (in ``encoder``) of the layers that get adapters: in every block but the last
    ``blocks``, the layers whose name inside the block is, or ends with ``.`` and, a target
    (``targets`` empty: the family's). A given target matching nothing, or a layer that is
    not Linear/Conv2d (``groups=1``), is a :class:`ConfigError`."""
    layout = block_layout(encoder)
    if not 0 <= blocks < len(layout.blocks):
        raise ConfigError(f"variant lora: blocks {blocks} leaves no frozen block to adapt "
                          f"({getattr(encoder, 'arch', 'the backbone')} has "
                          f"{len(layout.blocks)} blocks; all trained is variant last-blocks)")
    given = tuple(targets)
    targets = given or layout.lora_targets
    names, used = [], set()
    for block_name, block in layout.blocks[:len(layout.blocks) - blocks]:
        for name, module in block.named_modules():
            hits = [t for t in targets if name and (name == t or name.endswith(f".{t}"))]
            if not hits:
                continue
            if not _adaptable(module):
                raise ConfigError(f"lora.targets: {block_name}.{name} is a "
                                  f"{type(module).__name__}; LoRA adapts Linear and Conv2d "
                                  f"(groups 1) layers")
            used.update(hits)
            names.append(f"{block_name}.{name}")
    unused = [t for t in targets if t not in used]
    if (unused if given else not used):  # the family's: some (BasicBlocks have no conv3)
        first = layout.blocks[0][1]
        layers = [n for n, m in first.named_modules() if n and _adaptable(m)]
        raise ConfigError(f"lora.targets: {', '.join(unused)} matches no layer of the frozen "
                          f"blocks (Linear/Conv2d layers of a block: {', '.join(layers)})")
    return names


def add_adapters(encoder: nn.Module, names: Sequence[str], rank: int, alpha: float) -> None:
    """Inject LoRA adapters of rank ``rank`` and scale ``alpha / rank`` into the layers
    ``names`` of ``encoder`` (in place; keys as in the module docstring)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise HptError("variant lora needs peft: pip install 'hpt-hpc[lora]'") from None
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(names),
                        lora_dropout=0.0, bias="none")
    inject_adapter_in_model(config, encoder)


def merge_adapters(state: Dict[str, torch.Tensor], scale: float) -> Dict[str, torch.Tensor]:
    """``state`` with every adapted layer merged: ``<layer>.weight = W + scale * B A``
    (``W``: ``<layer>.base_layer.weight``; a convolution's ``A`` keeps its kernel), its
    base keys back to plain ones and the adapters dropped; computed in fp32, stored in
    ``W``'s dtype. A state without adapters is returned as it is."""
    if not any(is_adapter_key(k) for k in state):
        return state
    out = {k.replace(_BASE, "."): v for k, v in state.items() if not is_adapter_key(k)}
    for key, a in state.items():
        if _A not in key:
            continue
        layer, adapter = key.split(_A)
        b = state[f"{layer}{_B}{adapter}"]
        weight = out[f"{layer}.weight"]
        delta = torch.einsum("or,ri...->oi...", b.reshape(b.shape[0], b.shape[1]).float(),
                             a.float())
        out[f"{layer}.weight"] = (weight.float() + scale * delta).to(weight.dtype)
    return out


def checkpoint_scale(checkpoint: Dict[str, Any], path: str) -> float:
    """``alpha / rank`` of the adapters of a toolkit checkpoint (its stage's settings)."""
    stages = (checkpoint.get("config") or {}).get("stages") or {}
    lora = (stages.get(checkpoint.get("stage")) or {}).get("lora") or {}
    if not lora.get("rank") or lora.get("alpha") is None:
        raise CheckpointReadError(f"{path}: the checkpoint holds LoRA adapters but its stage's settings "
                       f"lack lora.rank/lora.alpha; cannot merge them")
    return float(lora["alpha"]) / int(lora["rank"])
