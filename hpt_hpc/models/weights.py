"""Checkpoint I/O and the checkpoint schema: atomic saving, safe (``weights_only=True``)
loading, the toolkit's checkpoint layout (:func:`stage_checkpoint`), and initial weights.

Everything is read with ``torch.load(path, map_location="cpu", weights_only=True)``, which only
unpickles tensors and plain containers/primitives. A checkpoint written with
:func:`save_checkpoint_atomic` must therefore hold only tensors, ints, floats, bools, strings,
``None`` and lists/tuples/dicts of those. RNG states qualify after conversion:
``torch.get_rng_state()`` is a tensor; NumPy's ``np.random.get_state()`` must become plain
lists/ints (``state[1].tolist()``); Python's ``random.getstate()`` is nested tuples of ints and
may be stored as lists (convert back with ``tuple`` before ``random.setstate``).

:mod:`.loading` reads every accepted layout as initial weights.
"""
from __future__ import annotations

import os
import pickle
from collections import OrderedDict
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..errors import HptError
from ..files import atomic_write

CHECKPOINT_FORMAT = "hpt-hpc/1"
SKIPPED_KEY = "skipped_images"  # {path: reason} of every unreadable image the stage met
SAFETENSORS_SUFFIX = ".safetensors"
_MAX_LISTED = 10


def stage_checkpoint(model: torch.nn.Module, optimizer: Any, step: int, total: int,
                     stage: str, variant: str, init: Any, config: dict, rng: dict,
                     run_id: Any, *, method: Optional[str] = None,
                     label: Optional[str] = None, target_steps: Optional[int] = None,
                     ssl: Optional[str] = None, backbone_key: Optional[str] = None,
                     target_key: Optional[str] = None,
                     feature_dim: Optional[int] = None,
                     init_report: Optional[dict] = None,
                     skipped: Optional[Dict[str, str]] = None) -> dict:
    """The toolkit's checkpoint of a stage: ``format``, ``model`` (the ssl method's state:
    online and target encoders, heads, queue; which is which: ``ssl`` names the method,
    ``backbone_key``/``target_key`` the prefixes of its online and target encoders,
    ``feature_dim`` the backbone's feature width),
    ``optimizer``, ``step``/``total_steps``, ``stage``, ``variant``, ``init``, the resolved
    ``config`` (plain dict), ``rng`` states, the tracker's ``tracker_run_id``, and its
    lineage: the stage's ``method`` tag, ``label`` (its run's name: the stage, grid cell or
    sweep unit) and ``target_steps`` (the step budget tables file it under), and
    ``init_report``: what the init loaded (plain values; a resumed stage reports it), and
    under :data:`SKIPPED_KEY` the unreadable images all ranks met so far (``{path:
    reason}``; a resumed stage counts on from them). Checkpoints written before the lineage
    keys lack them (:func:`checkpoint_info` reads them as None)."""
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
        "ssl": ssl,
        "backbone_key": backbone_key,
        "target_key": target_key,
        "feature_dim": feature_dim,
        "init_report": init_report,
        SKIPPED_KEY: dict(skipped or {}),
    }


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


def is_safetensors(path: str) -> bool:
    """True when ``path`` is a safetensors file (by content: an 8-byte little-endian
    header length, then the JSON header), whatever its name."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < size


def save_safetensors_atomic(state: Mapping[str, torch.Tensor], path: str,
                            metadata: Optional[Dict[str, str]] = None) -> None:
    """Write a flat tensor dict as a safetensors file with string ``metadata``, atomically
    (as :func:`save_checkpoint_atomic`)."""
    from safetensors.torch import save
    data = save({k: v.detach().cpu().contiguous() for k, v in state.items()}, metadata)
    with atomic_write(path, "wb", durable=True) as handle:
        handle.write(data)


def load_safetensors(path: str) -> Tuple["OrderedDict[str, torch.Tensor]", Dict[str, str]]:
    """``(tensors, string metadata)`` of a safetensors file (on the CPU); a file that is
    not one raises :class:`CheckpointReadError` naming ``path``."""
    from safetensors import safe_open
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            state = OrderedDict((key, handle.get_tensor(key)) for key in handle.keys())
            return state, dict(handle.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors' own error types vary by version
        raise CheckpointReadError(f"cannot read safetensors file {path} (corrupt or "
                                  f"truncated): {e}") from e
