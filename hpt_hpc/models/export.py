"""Taking a trained backbone out: this toolkit's checkpoint -> an export file other code
loads (``hpt-hpc export``), with its metadata (``meta``) inside. Layouts:

* ``torchvision``: a plain state dict with torchvision ResNet keys, no head: ``model =
  torchvision.models.resnet50(); model.fc = torch.nn.Identity();
  model.load_state_dict(state)``. Any model whose backbone keys are those of a torchvision
  model of its name: the built-in ResNets and timm's ResNets (``timm:resnet50`` has
  torchvision's keys). A stock model (width 1, standard stem, 3 channels, no
  ``timm_kwargs``: ``meta["model"]["torchvision"]`` names it) loads into torchvision's
  own class; any other loads into :func:`hpt_hpc.load_backbone` (built from ``meta``);
* ``timm``: a plain state dict with the keys of ``timm.create_model(name,
  pretrained=False, **meta["model"]["timm"]["kwargs"])`` (``num_classes=0``: no
  classifier keys; ``in_chans``, ``img_size`` and ``model.timm_kwargs`` as trained), which
  loads it strictly (checked when the file is written). For a classifier, load strictly
  and then ``model.reset_classifier(n)`` (or create with ``num_classes=n`` and load with
  ``strict=False``: only the classifier's keys are missing). timm models only;
* ``moco``: the official MoCo layout, ``state_dict`` with ``module.encoder_q.<key>``
  keys (the backbone's library keys), projection head included, and ``arch`` (what MoCo's
  and HPT's linear-evaluation code read), plus ``meta``; a torch file only.

The file: an ``--out`` name ending in ``.safetensors`` is a safetensors file (the
torchvision and timm layouts; ``meta`` as its string metadata, :func:`meta_to_strings`,
plus ``format: pt``), any other name a torch file, where ``meta`` travels as the state
dict's own metadata (``state_dict._metadata["hpt_hpc"]``: saved and loaded with it,
ignored by ``load_state_dict``) or, for ``moco``, under ``"meta"``.

``meta`` (:func:`export_meta`) holds plain values only (it loads with
``weights_only=True``): ``format``, ``layout``, ``model`` (the architecture: ``arch``,
``width``, ``small_stem``, ``stem_stride``, ``in_channels``, ``timm_kwargs``,
``image_size``, ``feature_dim``, ``timm``: name and ``create_model`` kwargs,
``torchvision``: the stock torchvision model or None), ``preprocessing`` (the evaluation
test view: :meth:`hpt_hpc.data.specs.EvalSpec.preprocessing`) and ``provenance`` (stage,
variant, method, ssl method, steps, dataset, config digest, tracking run, init, toolkit).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .. import __version__
from ..config import config_digest
from ..errors import HptError
from .backbones import TimmEncoder, build_encoder, is_timm, timm_name
from .loading import DEFAULT_SSL, classify
from .resnet import feature_dim_for
from .weights import (CHECKPOINT_FORMAT, SAFETENSORS_SUFFIX, is_safetensors, load_checkpoint,
                      load_safetensors, save_checkpoint_atomic, save_safetensors_atomic)

FORMATS = ("torchvision", "timm", "moco")
TORCH_ONLY = ("moco",)  # layouts that are not a flat state dict: no safetensors file
EXPORT_FORMAT = "hpt-hpc-export/1"
MODEL_KEYS = ("arch", "width", "small_stem", "stem_stride", "in_channels", "timm_kwargs")
STRING_PREFIX = "hpt."
META_KEY = "hpt_hpc"  # the entry of a state dict export's state_dict._metadata
MOCO_PREFIX = "module.encoder_q."


def default_format(arch: str) -> str:
    """The layout of the model's own library: timm for ``timm:<name>``, else torchvision."""
    return "timm" if is_timm(arch) else "torchvision"


def wants_safetensors(path: str) -> bool:
    """The one rule: an output name ending in ``.safetensors`` is a safetensors file."""
    return os.fspath(path).lower().endswith(SAFETENSORS_SUFFIX)


def torchvision_counterpart(arch: str, backbone: Dict[str, torch.Tensor],
                            timm_kwargs: Optional[Dict[str, Any]] = None,
                            ) -> Optional[Tuple[str, bool]]:
    """``(name, stock)`` when ``torchvision.models.<name>`` (``name``: the built-in arch or
    the timm model's name) has exactly the backbone's keys (its ``fc`` aside); ``stock``:
    the shapes are equal too and no ``timm_kwargs`` change the model, so it loads into
    torchvision's own class. None when torchvision has no such model."""
    import torchvision
    name = timm_name(arch) if is_timm(arch) else str(arch)
    try:
        with torch.device("meta"):
            model = torchvision.models.get_model(name, weights=None)
    except (ValueError, TypeError, KeyError):
        return None
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith("fc.")}
    if set(own) != set(backbone):
        return None
    same = all(own[k] == tuple(backbone[k].shape) for k in own)
    return name, same and not timm_kwargs


def _config_encoder(config: Dict[str, Any]) -> nn.Module:
    """The encoder a checkpoint's (plain dict) config describes, randomly initialised."""
    model = config.get("model") or {}
    return build_encoder(**{k: model[k] for k in MODEL_KEYS if model.get(k) is not None},
                         image_size=int((config.get("data") or {}).get("image_size", 224)))


def export_meta(checkpoint: Dict[str, Any], fmt: str, preprocessing: Dict[str, Any],
                encoder: Optional[nn.Module] = None) -> Dict[str, Any]:
    """What an export file says about its weights (see the module docstring);
    ``encoder``: the checkpoint's model if built already (timm models are built here
    otherwise, for their ``create_model`` arguments)."""
    config = checkpoint["config"]
    weights = classify(checkpoint, "the checkpoint")
    model = {k: config["model"].get(k) for k in MODEL_KEYS}
    model["timm_kwargs"] = model["timm_kwargs"] or {}
    model["image_size"] = (config.get("data") or {}).get("image_size")
    model["feature_dim"] = checkpoint.get("feature_dim") or (
        None if is_timm(model["arch"]) else feature_dim_for(model["arch"], model["width"]))
    model["timm"] = None
    if is_timm(model["arch"]):
        encoder = encoder if isinstance(encoder, TimmEncoder) else _config_encoder(config)
        model["timm"] = {"name": timm_name(model["arch"]), "kwargs": encoder.create_kwargs}
        model["feature_dim"] = model["feature_dim"] or encoder.feature_dim
    counterpart = torchvision_counterpart(model["arch"], weights.backbone, model["timm_kwargs"])
    model["torchvision"] = counterpart[0] if counterpart and counterpart[1] else None
    stage = checkpoint.get("stage")
    return {
        "format": EXPORT_FORMAT, "layout": fmt, "model": model,
        "preprocessing": dict(preprocessing),
        "provenance": {
            "stage": stage, "variant": checkpoint.get("variant"),
            "method": checkpoint.get("method"), "ssl": weights.ssl or DEFAULT_SSL,
            "label": checkpoint.get("label"), "steps": checkpoint.get("step"),
            "total_steps": checkpoint.get("total_steps"),
            "dataset": (config.get("stages", {}).get(stage) or {}).get("dataset"),
            "config_digest": config_digest(config), "experiment": config.get("name"),
            "run_id": checkpoint.get("tracker_run_id"), "init": checkpoint.get("init"),
            "toolkit": f"hpt-hpc {__version__}",
        },
    }


def _check_layout(fmt: str, arch: str, backbone: Dict[str, torch.Tensor],
                  timm_kwargs: Dict[str, Any], safetensors: bool) -> None:
    """Refuse a layout the model or the file kind cannot hold (one line)."""
    if fmt not in FORMATS:
        raise HptError(f"--format '{fmt}' is not one of {', '.join(FORMATS)}")
    if safetensors and fmt in TORCH_ONLY:
        raise HptError(f"--format {fmt} is a torch file (the official MoCo layout): give "
                       f"--out a name not ending in {SAFETENSORS_SUFFIX}, or --format "
                       f"{default_format(arch)} for a safetensors file")
    if fmt == "timm" and not is_timm(arch):
        raise HptError(f"--format timm needs a timm model (model.arch: timm:<name>); this "
                       f"checkpoint's model is {arch}: use --format torchvision")
    if fmt == "torchvision" and torchvision_counterpart(arch, backbone, timm_kwargs) is None:
        raise HptError(f"--format torchvision: torchvision has no model with the keys of "
                       f"{arch} (torchvision's layout is for ResNets); use --format timm")


def export_backbone(checkpoint: Dict[str, Any], fmt: Optional[str],
                    preprocessing: Dict[str, Any], safetensors: bool = False) -> Any:
    """The export object of a toolkit checkpoint in ``fmt`` (None: the model library's,
    :func:`default_format`); ``safetensors``: for a safetensors file (see the module
    docstring). Write it with :func:`save_export`."""
    model_cfg = checkpoint["config"]["model"]
    arch = model_cfg["arch"]
    fmt = fmt or default_format(arch)
    weights = classify(checkpoint, "the checkpoint")
    _check_layout(fmt, arch, weights.backbone, model_cfg.get("timm_kwargs") or {}, safetensors)
    encoder = None
    if is_timm(arch):  # what the timm layout promises: a strict load into create_model's
        encoder = _config_encoder(checkpoint["config"])
        try:
            encoder.backbone.load_state_dict(weights.backbone, strict=True)
        except RuntimeError as exc:
            raise HptError(f"the checkpoint's backbone does not load strictly into "
                           f"timm.create_model('{timm_name(arch)}', **"
                           f"{encoder.create_kwargs}): {' '.join(str(exc).split())}") from None
    meta = export_meta(checkpoint, fmt, preprocessing, encoder)
    if fmt == "moco":
        encoder_state = {**weights.backbone, **{f"fc.{k}": v for k, v in weights.head.items()}}
        return {"state_dict": {f"{MOCO_PREFIX}{k}": v for k, v in encoder_state.items()},
                "arch": arch, "meta": meta}
    state = OrderedDict(weights.backbone)
    state._metadata = OrderedDict({META_KEY: meta})  # type: ignore[attr-defined]
    return state


def save_export(exported: Any, path: str) -> None:
    """Write :func:`export_backbone`'s object to ``path`` atomically: a safetensors file
    when :func:`wants_safetensors`, else a torch file."""
    if not wants_safetensors(path):
        save_checkpoint_atomic(exported, path)
        return
    meta = export_meta_of(exported)
    if meta is None or meta["layout"] in TORCH_ONLY:
        raise HptError(f"{path}: only a state dict export is written as safetensors")
    save_safetensors_atomic(exported, path, {"format": "pt", **meta_to_strings(meta)})


def load_export_file(path: str) -> Any:
    """A file as :func:`read_export` takes it: a torch file as loaded (``weights_only``),
    a safetensors file as a state dict whose ``_metadata`` holds its ``meta``."""
    if not is_safetensors(path):
        return load_checkpoint(path)
    state, strings = load_safetensors(path)
    try:
        meta = meta_from_strings(strings)
    except ValueError as exc:
        raise HptError(f"{path}: its '{STRING_PREFIX}*' metadata is not this toolkit's "
                       f"(not JSON: {exc})") from None
    if meta:
        state._metadata = OrderedDict({META_KEY: meta})  # type: ignore[attr-defined]
    return state


def export_meta_of(obj: Any) -> Optional[Dict[str, Any]]:
    """The ``meta`` of a loaded export file (any layout); ``None`` for anything else."""
    if isinstance(obj, dict) and isinstance(obj.get("meta"), dict):
        meta = obj["meta"]
    else:
        meta = (getattr(obj, "_metadata", None) or {}).get(META_KEY)
    return meta if isinstance(meta, dict) and meta.get("format") == EXPORT_FORMAT else None


def read_export(obj: Any) -> Optional[Tuple[Dict[str, Any], Dict[str, Any]]]:
    """``(backbone state dict with its library's keys, meta)`` of a loaded export file;
    ``None`` for anything else."""
    meta = export_meta_of(obj)
    if meta is None:
        return None
    if meta["layout"] != "moco":
        return dict(obj), meta
    state = {k[len(MOCO_PREFIX):] if k.startswith(MOCO_PREFIX) else k: v
             for k, v in obj["state_dict"].items()}
    return {k: v for k, v in state.items() if not k.startswith("fc.")}, meta


def read_toolkit_checkpoint(path: str) -> Dict[str, Any]:
    """A toolkit checkpoint (``final.pt``/``last.pt``); anything else is an error."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise HptError(f"{path} is not an hpt-hpc checkpoint (format {CHECKPOINT_FORMAT}); "
                       f"export reads this toolkit's final.pt/last.pt files")
    config = state.get("config")
    for what, value in (("model", state.get("model")), ("config", config),
                        ("config.model", config.get("model") if isinstance(config, dict)
                         else {})):
        if not isinstance(value, dict):
            found = "missing" if value is None else f"a {type(value).__name__}, not a dict"
            raise HptError(f"{path} is a damaged hpt-hpc checkpoint: its '{what}' entry is "
                           f"{found}; export the stage's final.pt/last.pt as training "
                           f"wrote it")
    return state


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
