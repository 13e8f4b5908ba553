"""Checkpoint I/O and the checkpoint schema: atomic saving, safe (``weights_only=True``)
loading, the toolkit's checkpoint layout (:func:`stage_checkpoint`), and initial weights.

Everything is read with ``torch.load(path, map_location="cpu", weights_only=True)``, which only
unpickles tensors and plain containers/primitives. A checkpoint written with
:func:`save_checkpoint_atomic` must therefore hold only tensors, ints, floats, bools, strings,
``None`` and lists/tuples/dicts of those. RNG states qualify after conversion:
``torch.get_rng_state()`` is a tensor; NumPy's ``np.random.get_state()`` must become plain
lists/ints (``state[1].tolist()``); Python's ``random.getstate()`` is nested tuples of ints and
may be stored as lists (convert back with ``tuple`` before ``random.setstate``).

:func:`load_initial_weights` accepts four layouts (see its docstring).
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from ..errors import HptError
from ..files import atomic_write
from .moco import MoCo
from .resnet import describe_arch

CHECKPOINT_FORMAT = "hpt-hpc/1"
_MAX_LISTED = 10


def stage_checkpoint(model: torch.nn.Module, optimizer: Any, step: int, total: int,
                     stage: str, variant: str, init: Any, config: dict, rng: dict,
                     run_id: Any, *, method: Optional[str] = None,
                     label: Optional[str] = None, target_steps: Optional[int] = None) -> dict:
    """The toolkit's checkpoint of a stage: ``format``, ``model`` (MoCo state with queue),
    ``optimizer``, ``step``/``total_steps``, ``stage``, ``variant``, ``init``, the resolved
    ``config`` (plain dict), ``rng`` states, the tracker's ``tracker_run_id``, and its
    lineage: the stage's ``method`` tag, ``label`` (its run's name: the stage, grid cell or
    sweep unit) and ``target_steps`` (the step budget tables file it under). Checkpoints
    written before the lineage keys lack them (:func:`checkpoint_info` reads them as None)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "step": step,
        "total_steps": total,
        "stage": stage,
        "variant": variant,
        "init": init,
        "config": config,
        "rng": rng,
        "tracker_run_id": run_id,
        "method": method,
        "label": label,
        "target_steps": target_steps,
    }


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

    @property
    def is_toolkit(self) -> bool:
        return self.layout == "hpt-hpc"


def _header(path: str) -> Any:
    """The checkpoint's object, tensors memory-mapped (not read) where the file allows."""
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
    layout = _classify(obj, path)[0]
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
                          dict(stages.get(stage) or {}))


def checkpoint_run_id(path: str) -> Any:
    """The ``tracker_run_id`` a toolkit checkpoint holds (memory-mapped: tensors are not
    read); ``None`` for a missing file or a foreign layout."""
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not a torch zip file, or a foreign layout
        return None
    return (state.get("tracker_run_id") or None) if isinstance(state, dict) else None


class CheckpointReadError(HptError, ValueError):
    """A file exists but is not a readable (``weights_only``-safe) torch checkpoint."""


class IncompatibleCheckpointError(HptError, ValueError):
    """A checkpoint's backbone does not match the model's architecture."""


def save_checkpoint_atomic(obj: Any, path: str) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (:func:`hpt_hpc.files.atomic_write`:
    a temporary file beside it, synced, renamed over ``path``; on a failure ``path`` is
    left untouched; created as the umask says). See the module docstring for what ``obj``
    may contain."""
    with atomic_write(path, "wb", durable=True) as handle:
        torch.save(obj, handle)


def load_checkpoint(path: str) -> Any:
    """Load a checkpoint with ``weights_only=True`` onto the CPU.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointReadError` for a file
    that is not a torch checkpoint, is truncated, or holds objects outside the safe subset;
    both messages name ``path``.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # includes weights_only refusals
        raise CheckpointReadError(
            f"cannot load checkpoint {path} with weights_only=True (not a torch checkpoint, "
            f"or it contains objects other than tensors and plain Python containers): {e}"
        ) from e
    except Exception as e:  # garbage input can fail anywhere inside the unpickler
        raise CheckpointReadError(
            f"cannot read checkpoint {path} (corrupt, truncated or not a torch file): {e}") from e


def _strip(state: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def _select(state: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _classify(obj: Any, path: str) -> tuple[str, dict, dict | None, int]:
    """Return ``(layout, encoder_q state, encoder_k state or None, ignored key count)``."""
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        state = obj.get("model")
        if not isinstance(state, dict):
            raise CheckpointReadError(f"{path}: {CHECKPOINT_FORMAT} checkpoint without a 'model' dict")
        state = _strip(state, "module.")
        q, k = _select(state, "encoder_q."), _select(state, "encoder_k.")
        return "hpt-hpc", q, k or None, len(state) - len(q) - len(k)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state = _strip(obj["state_dict"], "module.")
        if any(key.startswith("encoder_q.") for key in state):
            q = _select(state, "encoder_q.")
            return "moco", q, None, len(state) - len(q)
        if any(key.startswith("backbone.") for key in state):
            q = _select(state, "backbone.")
        else:
            q = dict(state)
        q = {key: v for key, v in q.items() if not key.startswith("fc.")}
        return "openselfsup", q, None, len(state) - len(q)
    if _is_tensor_dict(obj):
        state = _strip(obj, "module.")
        if any(key.startswith("encoder_q.") for key in state):  # a bare MoCo state_dict
            q = _select(state, "encoder_q.")
            return "moco", q, None, len(state) - len(q)
        q = {key: v for key, v in state.items() if not key.startswith("fc.")}
        return "torchvision", q, None, len(state) - len(q)
    keys = sorted(obj)[:_MAX_LISTED] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointReadError(
        f"{path}: unrecognised checkpoint layout (top level: {keys}); expected a "
        f"'{CHECKPOINT_FORMAT}' checkpoint, an official MoCo or OpenSelfSup/HPT file with "
        f"'state_dict', or a torchvision ResNet state_dict")


def _listing(items: list) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return f"[{shown}{more}]"


def _compare(expected: dict, given: dict) -> tuple[list, list, list]:
    """Missing, unexpected and shape-mismatched keys (``num_batches_tracked`` may be absent)."""
    missing = [k for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in given if k not in expected]
    mismatched = [f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(v.shape)}"
                  for k, v in expected.items() if k in given and tuple(given[k].shape) != tuple(v.shape)]
    return missing, unexpected, mismatched


def _copy_into(module: torch.nn.Module, state: dict) -> int:
    """Copy the matching-shape tensors of ``state`` into ``module``; returns the count."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    module.load_state_dict(usable, strict=False)
    return len(usable)


def load_initial_weights(model: MoCo, path: str, strict_backbone: bool = True) -> dict:
    """Initialise ``model`` from a checkpoint file; returns a report dict.

    Layouts:

    * ``hpt-hpc``: this toolkit's ``{"format": "hpt-hpc/1", "model": MoCo state_dict}``; loads
      ``encoder_q`` and ``encoder_k`` (with heads). The queue is *not* loaded: a new stage starts
      with a fresh random queue.
    * ``moco``: official MoCo ``{"state_dict": {"module.encoder_q.*": ...}}``; ``encoder_q``
      including its head (when the head's shapes match).
    * ``openselfsup``: OpenSelfSup/HPT ``{"state_dict": backbone keys}``, optionally prefixed
      ``backbone.`` (other entries such as the neck are ignored).
    * ``torchvision``: a plain ResNet state_dict; ``fc.*`` is dropped (a classifier, not a
      projection head).

    Except for ``hpt-hpc`` (and whenever its ``encoder_k`` entries don't fit), ``encoder_k``
    becomes an exact copy of ``encoder_q`` after loading. A head that is missing or of another
    shape is left at its fresh initialisation (``head_loaded`` is False).

    Backbone keys must match exactly (missing ``num_batches_tracked`` buffers are tolerated);
    otherwise :class:`IncompatibleCheckpointError` is raised, unless ``strict_backbone`` is
    False, in which case matching tensors are loaded and the mismatches are reported.

    Report keys: ``layout``, ``loaded_keys`` (tensors loaded into ``encoder_q``),
    ``head_loaded``, ``encoder_k`` (``"checkpoint"`` or ``"copied from encoder_q"``),
    ``queue_loaded`` (always False), ``ignored_keys``, ``missing_keys``, ``unexpected_keys``,
    ``shape_mismatches``.
    """
    obj = load_checkpoint(path)
    layout, q_state, k_state, ignored = _classify(obj, os.fspath(path))

    own = model.encoder_q.state_dict()
    own_backbone = {k: v for k, v in own.items() if not k.startswith("fc.")}
    own_head = {k: v for k, v in own.items() if k.startswith("fc.")}
    given_backbone = {k: v for k, v in q_state.items() if not k.startswith("fc.")}
    given_head = {k: v for k, v in q_state.items() if k.startswith("fc.")}

    missing, unexpected, mismatched = _compare(own_backbone, given_backbone)
    if missing or unexpected or mismatched:
        fitting = [k for k, v in given_backbone.items()
                   if k in own_backbone and tuple(v.shape) == tuple(own_backbone[k].shape)]
        if strict_backbone or not fitting:
            raise IncompatibleCheckpointError(
                f"checkpoint {path} ({layout} layout) does not fit the model's backbone "
                f"{describe_arch(model.arch, model.width, model.small_stem, model.in_channels, model.feature_dim)}:"
                f"\n  missing keys ({len(missing)}): {_listing(missing)}"
                f"\n  unexpected keys ({len(unexpected)}): {_listing(unexpected)}"
                f"\n  shape mismatches ({len(mismatched)}): {_listing(mismatched)}")

    head_ok = bool(given_head) and not any(_compare(own_head, given_head))
    loaded = _copy_into(model.encoder_q, {**given_backbone, **(given_head if head_ok else {})})

    k_from_file = False
    if k_state is not None and head_ok:
        k_missing, k_unexpected, k_mismatched = _compare(model.encoder_k.state_dict(), k_state)
        if not (k_missing or k_unexpected or k_mismatched):
            model.encoder_k.load_state_dict(k_state, strict=False)
            k_from_file = True
    if not k_from_file:
        model.sync_key_encoder()

    return {
        "layout": layout,
        "loaded_keys": loaded,
        "head_loaded": head_ok,
        "encoder_k": "checkpoint" if k_from_file else "copied from encoder_q",
        "queue_loaded": False,
        "ignored_keys": ignored,
        "missing_keys": missing,
        "unexpected_keys": unexpected,
        "shape_mismatches": mismatched,
        "note": ("queue not loaded: a new stage starts with a fresh random queue"
                 if layout == "hpt-hpc" else ""),
    }
