"""Safe resume points of a stage: one run per stage folder, a resume only with the settings
that wrote the checkpoint, never a diverged state.

* :func:`stage_lock`: a non-blocking ``flock`` on ``<stage>/stage.lock``; a second run of
  the same stage fails at once naming the holder (host, pid). The kernel releases the
  lock when its holder dies, so a crashed run's lock is taken over by the next one.
  (``flock`` over NFS/Lustre depends on the mount: see docs/tracking.md.)
* :func:`fingerprint`: the settings a resume must not change (model, MoCo, optimiser,
  augmentation, data, the stage's dataset and settings, seed); stored in every
  checkpoint and compared key by key before anything is loaded. Only the learning rate
  may differ, when ``checkpoint.resume_changes`` names it (after a divergence:
  :func:`lower_rate_advice`).
* :func:`save_resume_point`: parameters must be finite before a save; the previous
  ``last.pt`` is kept as ``previous.pt`` and used when ``last.pt`` cannot be loaded.
* temporary files of interrupted saves are removed at start, under the stage lock
  (:func:`hpt_hpc.files.remove_folder_temporaries`).
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import torch

from ..config import StageLayout, config_to_dict, flatten
from ..config.schema import DatasetConfig, ExperimentConfig, StageConfig
from ..errors import HptError
from ..files import OutputError, link_atomic, make_folder
from ..models import CheckpointReadError, load_checkpoint, save_checkpoint_atomic
from ..plan import StagePlan

log = logging.getLogger(__name__)

FINGERPRINT_SECTIONS = ("model.", "moco.", "dino.", "optim.", "augment.", "compute.accumulate",
                        "seed", "data.image_size", "data.channels", "data.mean", "data.std",
                        "ssl")
FINGERPRINT_KEY = "resume_settings"
RESUME_CHANGES_KEY = "resume_changes"  # the allowed differences a resume found (not saved)


class StageBusy(HptError):
    """Another run holds the stage's lock."""


_HELD: set = set()  # the stage locks this process holds (a nested stage_lock: a no-op)


@contextmanager
def stage_lock(layout: StageLayout, label: str, hold: bool = True) -> Iterator[None]:
    """Hold the stage's lock for the duration (``hold`` False: a no-op, other ranks; a lock
    this process already holds: a no-op, so ``train`` can take every stage's lock before
    it touches the pipeline run and the launch records)."""
    key = os.path.abspath(layout.lock)
    if not hold or key in _HELD:
        yield
        return
    created = layout.root
    while not created.parent.exists() and created.parent != created.parent.parent:
        created = created.parent  # the topmost folder this call creates
    created = None if created.exists() else created
    make_folder(layout.root)
    with open(layout.lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise StageBusy(f"stage '{label}' is already running ({holder}) in {layout.root}; "
                            f"wait for it or cancel it (a crashed run's lock is released "
                            f"by the system)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"host {socket.gethostname()}, pid {os.getpid()}, since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        handle.flush()
        _HELD.add(key)
        try:
            yield
        except BaseException:
            if created and [p.name for p in layout.root.iterdir()] == [layout.lock.name]:
                # failed before any work: leave no folder behind (a retry starts clean)
                layout.lock.unlink(missing_ok=True)
                _remove_empty(layout.root, created)
            raise
        finally:
            _HELD.discard(key)
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_empty(folder, top) -> None:
    """Remove ``folder`` and its parents up to ``top`` while they are empty."""
    while True:
        try:
            folder.rmdir()
        except OSError:
            return
        if folder == top:
            return
        folder = folder.parent


def fingerprint(plan: StagePlan) -> Dict[str, Any]:
    """The settings a resumed stage must share with the run that wrote its checkpoint."""
    flat = flatten(config_to_dict(plan.config))
    keys = {k: v for k, v in flat.items() if k.startswith(FINGERPRINT_SECTIONS)}
    stage = plan.config.stages[plan.stage]
    keys.update({f"stages.{plan.stage}.{k}": v for k, v in vars(stage).items()
                 if k not in ("init", "init_partial")})  # used at the start only
    keys.update({f"datasets.{plan.dataset}.{k}": v
                 for k, v in vars(plan.config.datasets[plan.dataset]).items()})
    keys.update({"plan.iterations": plan.iterations, "plan.lr": plan.lr,
                 "plan.batch_size": plan.batch_size})
    return {k: v if isinstance(v, (int, float, str, bool)) or v is None else repr(v)
            for k, v in sorted(keys.items())}


def _default(key: str) -> Any:
    """A setting's default as a fingerprint holds it: what a checkpoint written before the
    setting existed ran with."""
    parts = key.split(".")
    if parts[0] in ("stages", "datasets") and len(parts) == 3:
        section = StageConfig() if parts[0] == "stages" else DatasetConfig()
        value = getattr(section, parts[2], None)
    else:
        value = flatten(config_to_dict(ExperimentConfig())).get(key)
    return value if isinstance(value, (int, float, str, bool)) or value is None else repr(value)


def _differences(saved: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, str]:
    """``{key: "key: old -> new"}`` of every setting that differs."""
    def old(key: str) -> Any:
        return saved[key] if key in saved else _default(key)
    return {k: f"{k}: {old(k)!r} -> {current.get(k)!r}"
            for k in sorted(set(saved) | set(current)) if old(k) != current.get(k)}


def _allowed_changes(plan: StagePlan) -> set:
    """The fingerprint keys ``checkpoint.resume_changes`` lets differ (a learning rate
    changes the stage's effective rate, ``plan.lr``, too)."""
    allowed = set(plan.config.checkpoint.resume_changes)
    return allowed | {"plan.lr"} if allowed else allowed


def lower_rate_advice(plan: StagePlan) -> str:
    """What to do after a divergence, as options to add to the same command."""
    stage_lr = plan.config.stages[plan.stage].lr
    key = f"stages.{plan.stage}.lr" if stage_lr is not None else "optim.lr"
    lower = (stage_lr if stage_lr is not None else plan.config.optim.lr) / 10
    return (f"Lower the learning rate and re-run to resume from the last good checkpoint "
            f"({plan.layout.last}): add --set {key}={lower:g} --set "
            f"checkpoint.resume_changes=[{key}] to the same command, or move "
            f"{plan.layout.root} away to start fresh")


def finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())


def _finite_state(state: Dict[str, Any]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in state["model"].values()
               if isinstance(t, torch.Tensor) and t.is_floating_point())


def load_resume_point(plan: StagePlan) -> Optional[Dict[str, Any]]:
    """The stage's resume checkpoint (``last.pt``, else ``previous.pt`` when ``last.pt``
    is unreadable or not finite), checked against the current settings; ``None`` when the
    stage has not saved one."""
    layout = plan.layout
    state = None
    for path in (layout.last, layout.previous):
        if not path.exists():
            continue
        try:
            candidate = load_checkpoint(path)
        except CheckpointReadError as exc:
            log.warning("stage %s: %s cannot be read (%s); trying the previous one",
                        plan.label, path, exc)
            continue
        if not _finite_state(candidate):
            log.warning("stage %s: %s holds non-finite parameters; trying the previous one",
                        plan.label, path)
            continue
        state = candidate
        if path == layout.previous:
            log.warning("stage %s: resuming from %s", plan.label, path)
        break
    if state is None:
        if layout.last.exists() or layout.previous.exists():
            raise HptError(f"stage '{plan.label}': no usable resume checkpoint in "
                           f"{layout.checkpoints} (unreadable or diverged); move that folder "
                           f"away to start the stage fresh")
        return None
    saved = state.get(FINGERPRINT_KEY)
    differ = _differences(saved, fingerprint(plan)) if saved is not None else {}
    allowed = _allowed_changes(plan)
    refused = [text for key, text in differ.items() if key not in allowed]
    if refused:
        shown = "; ".join(refused[:6]) + (f"; ... ({len(refused) - 6} more)"
                                          if len(refused) > 6 else "")
        raise HptError(f"stage '{plan.label}': its checkpoint {layout.last} was written with "
                       f"other settings ({shown}). Resume with the original settings, or "
                       f"start fresh by moving {layout.root} away (or another output_dir)")
    state[RESUME_CHANGES_KEY] = [text for key, text in differ.items() if key in allowed]
    if state[RESUME_CHANGES_KEY]:
        log.warning("stage %s: resuming with changed settings (checkpoint.resume_changes): "
                    "%s", plan.label, "; ".join(state[RESUME_CHANGES_KEY]))
    return state


def check_finite(model: torch.nn.Module, plan: StagePlan, step: int, lr: float) -> None:
    """Refuse non-finite parameters before a save (every rank: their weights agree)."""
    if not finite(model):
        raise HptError(f"stage '{plan.label}': the parameters became non-finite by step "
                       f"{step} (learning rate {lr:g}); nothing was saved, so the stage's "
                       f"last good checkpoint stays its resume point. "
                       f"{lower_rate_advice(plan)}")


def _saved_step(path) -> Optional[int]:
    """The step a checkpoint file holds (memory-mapped: tensors are not read); None when
    it cannot be read (corrupt, truncated, not a checkpoint)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:  # noqa: BLE001 - garbage can fail anywhere in the unpickler
        return None


def _keep(layout: StageLayout, step: int, keep: int, at: List[int]) -> None:
    """Keep ``last.pt`` (about to be replaced) as ``step-<n>.pt`` when it is one of the
    last ``keep`` or of the steps ``at``; prune the others to ``keep`` (those ``at`` stay)."""
    if not keep and step not in at:
        return
    link_atomic(layout.last, layout.kept(step))
    pinned = {layout.kept(s) for s in at}
    periodic = [p for p in layout.kept_checkpoints() if p not in pinned]
    for old in periodic[:-keep] if keep else periodic:
        old.unlink(missing_ok=True)


def save_resume_point(state: Dict[str, Any], plan: StagePlan, final: bool = False) -> None:
    """Save ``state`` as ``last.pt``, keeping the one before as ``previous.pt`` (and the
    last ``checkpoint.keep`` as ``step-<n>.pt``). ``final``: save ``final.pt`` once, with
    ``last.pt`` a hard link to it and no ``previous.pt`` (a finished stage is one copy).
    The old ``last.pt`` is linked as ``previous.pt`` before the new one replaces it, so a
    failed save (a full disk) leaves both as they were; an unreadable ``last.pt`` is never
    kept (``previous.pt``, the resume point, stays). Call :func:`check_finite` first."""
    layout = plan.layout
    state[FINGERPRINT_KEY] = fingerprint(plan)
    if layout.last.exists():
        step = _saved_step(layout.last)
        if step is None:
            log.warning("stage %s: %s cannot be read; replacing it, %s stays the previous "
                        "checkpoint", plan.label, layout.last, layout.previous)
        else:
            _keep(layout, step, plan.config.checkpoint.keep, plan.config.checkpoint.at)
            link_atomic(layout.last, layout.previous)
    target = layout.final if final else layout.last
    try:
        save_checkpoint_atomic(state, target)
    except OutputError as exc:
        raise OutputError(f"{exc}; the stage's previous checkpoint is kept: re-run the "
                          f"stage to resume from it once the cause is fixed") from None
    if final:
        link_atomic(layout.final, layout.last)
        layout.previous.unlink(missing_ok=True)
