"""Expand a config's ``sweep`` grid into cells: one set of ``--set`` overrides each."""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

from ..config import ConfigError, ExperimentConfig

STAGE_SHORTHANDS = ("variant", "lr", "iterations", "dataset", "batch_size", "init")


@dataclass
class SweepCell:
    """One point of the grid: a readable name and the overrides that make it."""

    name: str
    values: Dict[str, Any]
    overrides: List[str]


def _target_key(key: str, stage: str) -> str:
    if key in STAGE_SHORTHANDS:
        return f"stages.{stage}.{key}"
    return key


def _slug(values: Dict[str, Any]) -> str:
    text = ",".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text) or "default"


def expand_sweep(cfg: ExperimentConfig, stage: str) -> List[SweepCell]:
    """Cartesian product of ``cfg.sweep`` for ``stage``; one cell (no overrides) when empty.

    Each cell writes under ``<output_dir>/sweep/<cell name>``; a ``stage:<name>`` init is
    pinned to the shared upstream stage's checkpoint in the original output folder.
    """
    grid = cfg.sweep
    if not grid:
        return [SweepCell("default", {}, [])]
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{key}: expected a non-empty list of values")
    keys = list(grid)
    cells = []
    init = cfg.stages[stage].init if stage in cfg.stages else None
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = _slug(values)
        overrides = [f"{_target_key(k, stage)}={yaml.safe_dump(v, default_flow_style=True).strip()}"
                     .replace("\n...", "") for k, v in values.items()]
        overrides.append(f"output_dir={Path(cfg.output_dir) / 'sweep' / name}")
        if init and init.startswith("stage:") and "init" not in values:
            ref = init.split(":", 1)[1]
            overrides.append(f"stages.{stage}.init="
                             f"{Path(cfg.output_dir) / ref / 'checkpoints' / 'final.pt'}")
        cells.append(SweepCell(name, values, overrides))
    names = [c.name for c in cells]
    if len(set(names)) != len(names):
        raise ConfigError("sweep cells must differ in their values")
    return cells


def cell_overrides(base: Sequence[str], cell: SweepCell) -> List[str]:
    """The launch's own ``--set`` overrides followed by the cell's."""
    return list(base) + cell.overrides
