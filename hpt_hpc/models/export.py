"""Taking a trained backbone out: this toolkit's checkpoint -> an export file other code
loads (``hpt-hpc export``), with its metadata (``meta``) inside:

* ``torchvision``: a plain state dict, the query encoder's backbone (no projection head)
  with torchvision ResNet keys: ``model = torchvision.models.resnet50(); model.fc =
  torch.nn.Identity(); model.load_state_dict(torch.load(path, weights_only=True))`` (a
  stage trained with ``model.width: 1``, no small stem and 3 channels is exactly
  torchvision's architecture; other settings load into :func:`hpt_hpc.models.build_resnet`
  with ``meta["model"]``). ``meta`` travels as the state dict's own metadata
  (``state_dict._metadata["hpt_hpc"]``: where torch keeps a state dict's metadata, saved
  and loaded with it, ignored by ``load_state_dict``), so the file stays a drop-in;
* ``moco``: the official MoCo layout, ``state_dict`` with ``module.encoder_q.<key>``
  keys, projection head included, and ``arch`` (what MoCo's and HPT's linear-evaluation
  code read), plus ``meta``.

``meta`` (:func:`export_meta`) holds plain values only, so it loads with
``weights_only=True`` and travels as string metadata too (:func:`meta_to_strings`, e.g. a
safetensors header): ``format``, ``layout``, ``model`` (the architecture),
``preprocessing`` (the evaluation test view: :meth:`hpt_hpc.data.specs.EvalSpec.
preprocessing`) and ``provenance`` (stage, variant, method, steps, dataset, config
digest, tracking run, init, toolkit version).
"""
from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from .. import __version__
from ..config import config_digest
from ..errors import HptError
from .backbones import is_timm
from .loading import classify
from .resnet import feature_dim_for
from .weights import CHECKPOINT_FORMAT, load_checkpoint

FORMATS = ("torchvision", "moco")
EXPORT_FORMAT = "hpt-hpc-export/1"
MODEL_KEYS = ("arch", "width", "small_stem", "stem_stride", "in_channels", "timm_kwargs")
STRING_PREFIX = "hpt."
META_KEY = "hpt_hpc"  # the entry of a torchvision export's state_dict._metadata


def torchvision_compatible(config: Dict[str, Any]) -> bool:
    """True when a stage's model config is a plain torchvision ResNet."""
    model = config.get("model", {})
    return (model.get("width") == 1.0 and not model.get("small_stem")
            and model.get("in_channels") == 3)


def read_toolkit_checkpoint(path: str) -> Dict[str, Any]:
    """A toolkit checkpoint (``final.pt``/``last.pt``); anything else is an error."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise HptError(f"{path} is not an hpt-hpc checkpoint (format {CHECKPOINT_FORMAT}); "
                       f"export reads this toolkit's final.pt/last.pt files")
    return state


def export_meta(checkpoint: Dict[str, Any], fmt: str,
                preprocessing: Dict[str, Any]) -> Dict[str, Any]:
    """What an export file says about its weights (see the module docstring)."""
    config = checkpoint["config"]
    model = {k: config["model"].get(k) for k in MODEL_KEYS}
    model["timm_kwargs"] = model["timm_kwargs"] or {}
    model["feature_dim"] = checkpoint.get("feature_dim") or (
        None if is_timm(model["arch"]) else feature_dim_for(model["arch"], model["width"]))
    stage = checkpoint.get("stage")
    return {
        "format": EXPORT_FORMAT, "layout": fmt, "model": model,
        "preprocessing": dict(preprocessing),
        "provenance": {
            "stage": stage, "variant": checkpoint.get("variant"),
            "method": checkpoint.get("method"), "steps": checkpoint.get("step"),
            "total_steps": checkpoint.get("total_steps"),
            "dataset": (config.get("stages", {}).get(stage) or {}).get("dataset"),
            "config_digest": config_digest(config), "experiment": config.get("name"),
            "run_id": checkpoint.get("tracker_run_id"), "init": checkpoint.get("init"),
            "toolkit": f"hpt-hpc {__version__}",
        },
    }


def export_backbone(checkpoint: Dict[str, Any], fmt: str,
                    preprocessing: Dict[str, Any]) -> Dict[str, Any]:
    """The export file of a toolkit checkpoint in ``fmt`` (see the module docstring)."""
    if fmt not in FORMATS:
        raise HptError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
    weights = classify(checkpoint, "the checkpoint")
    meta = export_meta(checkpoint, fmt, preprocessing)
    if fmt == "moco":
        encoder = {**weights.backbone, **{f"fc.{k}": v for k, v in weights.head.items()}}
        return {"state_dict": {f"module.encoder_q.{k}": v for k, v in encoder.items()},
                "arch": checkpoint["config"]["model"]["arch"], "meta": meta}
    state = OrderedDict(weights.backbone)
    state._metadata = OrderedDict({META_KEY: meta})  # type: ignore[attr-defined]
    return state


def export_meta_of(obj: Any) -> Optional[Dict[str, Any]]:
    """The ``meta`` of a loaded export file (either layout); ``None`` for anything else."""
    if isinstance(obj, dict) and isinstance(obj.get("meta"), dict):
        meta = obj["meta"]
    else:
        meta = (getattr(obj, "_metadata", None) or {}).get(META_KEY)
    return meta if isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT else None


def read_export(obj: Any) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """``(backbone state dict with torchvision keys, meta)`` of a loaded export file;
    ``None`` for anything else."""
    meta = export_meta_of(obj)
    if meta is None:
        return None
    state = obj["state_dict"] if meta["layout"] == "moco" else obj
    prefix = "module.encoder_q."
    state = {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, meta


def meta_to_strings(meta: Dict[str, Any], prefix: str = STRING_PREFIX) -> Dict[str, str]:
    """``meta`` as a flat string mapping (safetensors' ``__metadata__``): dotted keys
    under ``prefix``, JSON values (``{"hpt.preprocessing.mean": "[0.5, 0.5, 0.5]"}``)."""
    out: Dict[str, str] = {}
    for key, value in meta.items():
        if isinstance(value, dict) and value:
            out.update(meta_to_strings(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value)
    return out


def meta_from_strings(strings: Dict[str, str], prefix: str = STRING_PREFIX) -> Dict[str, Any]:
    """The inverse of :func:`meta_to_strings` (keys without ``prefix`` are ignored)."""
    meta: Dict[str, Any] = {}
    for key, text in strings.items():
        if not key.startswith(prefix):
            continue
        *path, leaf = key[len(prefix):].split(".")
        node = meta
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = json.loads(text)
    return meta
