"""Where things live under an ``output_dir``: the only module that spells these paths.

* a stage: ``<output_dir>/<stage>/`` with ``checkpoints/last.pt`` (periodic, resume
  point; the one before it as ``checkpoints/previous.pt``), ``checkpoints/final.pt`` (the
  finished stage), ``stage.lock`` (held while a run owns the stage), ``init-cache/`` (registry and run
  checkpoints downloaded once), ``result.json`` (the stage's record, :mod:`hpt_hpc.plan.record`)
  and the tracker's spill files;
* a launch: ``launches/`` (launch records, ``latest.json`` the newest), ``slurm-logs/%j/``
  (submitit's folder);
* ``hpt-hpc probe``/``finetune``: ``evaluations/init-cache/`` (downloaded checkpoints);
* a grid launch: ``grid/<cell>/`` (each cell an output_dir of its own);
* an experiment file: ``upstream/<stage>/`` (shared base/source stages), ``units/<id>/``
  (a pretraining unit's output_dir; its stage is ``target``) and
  ``units/<id>/results/<eval id>.json`` (evaluation records); results files name the
  paths below the output folder relative to it (:meth:`OutputLayout.relative`).
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..errors import ConfigError

CHECKPOINTS = "checkpoints"
LAST = "last.pt"
PREVIOUS = "previous.pt"
FINAL = "final.pt"
LOCK = "stage.lock"
PROGRESS = "progress.json"
KEPT_PREFIX = "step-"  # <stage>/checkpoints/step-<step>.pt (checkpoint.keep, .at)
INIT_CACHE = "init-cache"
STAGE_NAMES = ("base", "source", "target")  # the stages (run order), a folder each
STAGE_RESULT = "result.json"
UNIT_STAGE = "target"  # a sweep unit trains its target stage
EXPERIMENTS = Path("outputs") / "experiments"  # an experiment file's default output folders


def folder_name(name: object, where: str) -> str:
    """``name`` (from a file) as one folder inside its parent: refused in one line when it
    is not a string, is empty, ``.`` or ``..``, or holds a path separator or NUL."""
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise ConfigError(f"{where}: expected a name, got {name!r}")
    text = str(name)
    if not text.strip() or text in (".", "..") or any(c in text for c in "/\\\0"):
        raise ConfigError(f"{where}: {text!r} is not a folder name (no '/', '\\', '..' or "
                          f"empty names: it names a folder inside its output root)")
    return text


@dataclass(frozen=True)
class StageLayout:
    """The folder of one stage of an output_dir."""

    output_dir: Path
    stage: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))

    @property
    def root(self) -> Path:
        return self.output_dir / self.stage

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST

    @property
    def final(self) -> Path:
        return self.checkpoints / FINAL

    @property
    def previous(self) -> Path:
        return self.checkpoints / PREVIOUS

    def kept(self, step: int) -> Path:
        """A resume point kept by ``checkpoint.keep`` or ``checkpoint.at`` (a hard link: no
        extra bytes)."""
        return self.checkpoints / f"{KEPT_PREFIX}{step:09d}.pt"

    def kept_checkpoints(self) -> list:
        """The kept resume points, oldest first."""
        return sorted(self.checkpoints.glob(f"{KEPT_PREFIX}*.pt"))

    @property
    def lock(self) -> Path:
        return self.root / LOCK

    @property
    def init_cache(self) -> Path:
        return self.root / INIT_CACHE

    @property
    def progress(self) -> Path:
        """Latest progress figures of a running stage (read by ``hpt-hpc status``)."""
        return self.root / PROGRESS

    @property
    def result(self) -> Path:
        return self.root / STAGE_RESULT

    def checkpoint(self, completed: bool) -> Path:
        """``final.pt`` for a finished stage, else ``last.pt``."""
        return self.final if completed else self.last

    def sibling(self, stage: str) -> "StageLayout":
        """Another stage of the same output_dir."""
        return StageLayout(self.output_dir, stage)

    @classmethod
    def finished_at(cls, checkpoint: object) -> Optional["StageLayout"]:
        """The stage whose final checkpoint ``checkpoint`` is (``None``: another file)."""
        path = Path(checkpoint).resolve()
        if len(path.parents) < 3:
            return None
        layout = cls(path.parents[2], path.parents[1].name)
        return layout if layout.final == path else None


@dataclass(frozen=True)
class OutputLayout:
    """The folders of an output_dir above the stages: launches, logs, grids, sweeps."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def stage(self, name: str) -> StageLayout:
        return StageLayout(self.root, name)

    @property
    def launches(self) -> Path:
        return self.root / "launches"

    @property
    def latest_launch(self) -> Path:
        return self.launches / "latest.json"

    @property
    def evaluations(self) -> StageLayout:
        """Where command-line evaluations cache downloaded checkpoints."""
        return StageLayout(self.root, "evaluations")

    def evaluation_result(self, label: str, stamp: str) -> Path:
        """A command-line evaluation's result file, ``evaluations/<label>-<stamp>-<6 hex>.json``
        (``label``: a safe name): the random part keeps two evaluations of one checkpoint
        started in the same second apart; a name already on disk is never returned."""
        while True:
            path = self.evaluations.root / f"{label}-{stamp}-{secrets.token_hex(3)}.json"
            if not path.exists():
                return path

    @property
    def log_folder(self) -> Path:
        return self.root / "slurm-logs" / "%j"

    def grid_cell(self, cell: str) -> Path:
        return self.root / "grid" / cell

    def upstream(self, stage: str, suffix: str = "") -> StageLayout:
        """A sweep's shared stage: ``upstream<suffix>/<stage>`` (``suffix``: the sweep's
        ssl method when not MoCo-v2, e.g. ``-dino``)."""
        return StageLayout(self.root / f"upstream{suffix}", stage)

    def unit_dir(self, unit_id: str) -> Path:
        return self.root / "units" / unit_id

    def unit_stage(self, unit_id: str) -> StageLayout:
        return StageLayout(self.unit_dir(unit_id), UNIT_STAGE)

    def eval_result(self, folder_unit: str, eval_id: str) -> Path:
        return self.unit_dir(folder_unit) / "results" / f"{eval_id}.json"

    def eval_results(self) -> List[Path]:
        return sorted(self.root.glob("units/*/results/*.json"))

    def finished_unit_stages(self, stage: str = UNIT_STAGE) -> List[str]:
        """Unit ids whose ``stage`` has its final checkpoint."""
        pattern = f"units/*/{stage}/{CHECKPOINTS}/{FINAL}"
        return sorted(p.parents[2].name for p in self.root.glob(pattern))

    def relative(self, path: str) -> str:
        """``path`` as results files name it: relative to the output folder when it lies
        below it (``units/<id>/target/checkpoints/final.pt``), else as given (a reference
        such as ``stage:target`` or ``none``, a file elsewhere)."""
        if not os.path.isabs(path):
            return path
        for resolve in (os.path.abspath, os.path.realpath):
            rel = os.path.relpath(resolve(path), resolve(self.root))
            if rel != os.pardir and not rel.startswith(os.pardir + os.sep):
                return rel
        return path
