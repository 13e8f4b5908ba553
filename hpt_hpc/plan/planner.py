"""The planner for configs: a config read once, plus ``--set`` overrides, becomes phases
of :class:`StagePlan` objects (``hpt-hpc train``, ``launch``, ``config show --plan``).

* Stages run in order, each phase ``afterok`` on the one before. With ``handover``
  (``launch --chain``) each later stage starts from the previous one: through the MLflow
  registry (``models:/<model>@<pipeline>-<stage>``) when tracking is on, else from its
  file (``stage:<name>``).
* The config's ``grid`` expands the last stage into cells (one array job each), each with
  its own output folder ``<output_dir>/grid/<cell>``; a ``stage:<name>`` init of a cell is
  pinned to that stage's checkpoint in the original output folder.
* Everything that can be checked before submission is: stage names, init files and
  references, datasets (listed once per dataset and batch).
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

from ..config import (STAGE_NAMES, ConfigError, ExperimentConfig, InitRef, OutputLayout,
                      StageLayout, config_from_dict, config_to_dict, stage_settings)
from ..config.schema import BLOCK_VARIANTS
from ..data import list_split
from ..data.bands import read_image
from ..data.images import UnreadableImage
from ..errors import HptError
from ..tracking.registry import alias_for, safe_name
from ..tracking.store import resolve_uri
from .lineage import starting_point
from .methods import stage_method
from .plans import Phase, StagePlan, TrackingTarget

GRID_SHORTHANDS = ("variant", "lr", "iterations", "dataset", "batch_size", "init")
DEFAULT_CELL = "default"


@dataclass
class GridCell:
    """One point of a config's ``grid``: a readable name and the overrides that make it."""

    name: str
    values: Dict[str, Any]
    overrides: List[str]


@dataclass
class ConfigPlan:
    """A planned config: the base config, where its jobs log, and the phases."""

    config: ExperimentConfig
    tracking: Optional[TrackingTarget]
    phases: List[Phase]

    @property
    def plans(self) -> List[StagePlan]:
        return [p for phase in self.phases for p in phase.plans]


def tracking_target(cfg: ExperimentConfig, pipeline: Optional[str] = None,
                    parent_run_id: Optional[str] = None) -> Optional[TrackingTarget]:
    """Where ``cfg``'s runs go (``None``: tracking off); the URI is resolved now
    (``MLFLOW_TRACKING_URI`` > ``tracking.uri`` > ``<output_dir>/mlflow.db``)."""
    if not cfg.tracking.enabled:
        return None
    experiment = cfg.tracking.experiment or cfg.name
    return TrackingTarget(resolve_uri(cfg.tracking.uri, cfg.output_dir), experiment,
                          safe_name(cfg.tracking.model_name or experiment),
                          pipeline or cfg.name, parent_run_id, cfg.tracking.flush_seconds,
                          cfg.tracking.system_metrics)


def stage_plan(cfg: ExperimentConfig, stage: str, *, world_size: int = 1,
               init: Optional[InitRef] = None, label: Optional[str] = None,
               method: Optional[str] = None, tags: Optional[Dict[str, str]] = None,
               tracking: Any = "config", start: Any = "init",
               budget: Optional[int] = None) -> StagePlan:
    """The plan of one stage of ``cfg`` (``init``: overrides the stage's own;
    ``tracking``: a target, ``None`` for none, default: from the config). Without a
    ``method`` the method table names it from the variant and ``start`` (default: where
    ``init`` starts, :func:`~hpt_hpc.plan.lineage.starting_point`); ``budget``: a sweep
    unit's step budget."""
    if stage not in cfg.stages:
        raise HptError(f"stage '{stage}' is not defined in the config (defined: "
                       f"{', '.join(cfg.stages) or 'none'})")
    settings = stage_settings(cfg, stage, world_size)
    if init is None:
        init = cfg.stages[stage].init
    if tracking == "config":
        tracking = tracking_target(cfg)
    if method is None:
        section = cfg.stages[stage]
        method = stage_method(stage, section.variant,
                              starting_point(init) if start == "init" else start,
                              section.train_head, section.ssl or cfg.ssl)
    return StagePlan(cfg, stage, label or stage, method, init.absolute(),
                     StageLayout(Path(cfg.output_dir).resolve(), stage),
                     settings["iterations"], settings["lr"], settings["batch_size"],
                     settings["rank_batch_size"], world_size, tracking, dict(tags or {}),
                     budget)


def _slug(values: Dict[str, Any]) -> str:
    text = ",".join(f"{k.split('.')[-1]}={v}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9=,._-]+", "_", text) or DEFAULT_CELL


def grid_cells(cfg: ExperimentConfig, stage: str) -> List[GridCell]:
    """The Cartesian product of ``cfg.grid`` for ``stage``; one default cell when empty.
    Shorthands (``variant``, ``lr``, ...) mean ``stages.<stage>.<key>``."""
    if not cfg.grid:
        return [GridCell(DEFAULT_CELL, {}, [])]
    for key, values in cfg.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: expected a non-empty list of values")
    keys, cells = list(cfg.grid), []
    for combo in itertools.product(*(cfg.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = _slug(values)
        overrides = [f"{f'stages.{stage}.{k}' if k in GRID_SHORTHANDS else k}="
                     f"{yaml.safe_dump(v, default_flow_style=True).strip()}".replace("\n...", "")
                     for k, v in values.items()]
        overrides.append(f"output_dir={OutputLayout(Path(cfg.output_dir)).grid_cell(name)}")
        cells.append(GridCell(name, values, overrides))
    if len({c.name for c in cells}) != len(cells):
        raise ConfigError("grid cells must differ in their values")
    return cells


def training_records(cfg: ExperimentConfig, stage: str, batch_size: int) -> list:
    """A stage's training images; fails (before any work) when the split is missing, empty
    or smaller than one global batch."""
    dataset = cfg.stages[stage].dataset
    records, _ = list_split(cfg.datasets[dataset], "train")
    if len(records) < batch_size:
        raise HptError(f"stage '{stage}': dataset '{dataset}' has {len(records)} training "
                       f"images, fewer than one global batch ({batch_size}); lower "
                       f"optim.batch_size")
    if cfg.data.channels not in (1, 3):  # bands are not converted: the first must fit
        try:
            read_image(records[0].path, cfg.data.channels, cfg.data.max_pixels,
                       data=records.read_bytes(0) if hasattr(records, "read_bytes") else None)
        except UnreadableImage as exc:
            raise HptError(f"stage '{stage}': dataset '{dataset}' does not hold "
                           f"{cfg.data.channels}-band images: {exc.reason} "
                           f"({records[0].path})") from None
    return records


def check_data(plans: Sequence[StagePlan]) -> None:
    """Every distinct dataset/batch of ``plans`` is readable and holds one global batch."""
    seen = set()
    for plan in plans:
        key = (repr(plan.config.datasets[plan.dataset]), plan.batch_size)
        if key not in seen:
            seen.add(key)
            training_records(plan.config, plan.stage, plan.batch_size)


def check_variants(plans: Sequence[StagePlan]) -> None:
    """Every stage that trains its last blocks (variants last-blocks, lora) asks for no
    more blocks, and adapters on no other layers, than its backbone has."""
    seen = set()
    for plan in plans:
        cfg, section = plan.config, plan.config.stages[plan.stage]
        key = (repr(cfg.model), cfg.data.image_size, section.variant, section.blocks,
               tuple(section.lora.targets))
        if plan.variant in BLOCK_VARIANTS and key not in seen:
            seen.add(key)
            from ..models.variants import check_variant  # torch: only for these variants
            check_variant(cfg.model, cfg.data.image_size, plan.stage, section)


def check_local_crops(plans: Sequence[StagePlan]) -> List[StagePlan]:
    """``augment.local_crops`` is for the stages whose ssl method takes local views (DINO).
    A stage of another method gets the two global views (its plan's ``local_crops.number``
    0) when some stage of the config takes them; when none does, the setting would do
    nothing anywhere and is refused. Returns the plans, resolved."""
    out = []
    for plan in plans:
        cfg = plan.config
        number = cfg.augment.local_crops.number
        if number:
            from ..ssl import method_class  # torch: only when local views are asked for
            if not method_class(plan.ssl).local_crops:
                used_by = [s for s, section in cfg.stages.items()
                           if method_class(section.ssl or cfg.ssl).local_crops]
                if not used_by:
                    raise ConfigError(f"stages.{plan.stage}: ssl method '{plan.ssl}' takes "
                                      f"the two global views only, but "
                                      f"augment.local_crops.number is {number}; set it to 0 "
                                      f"or use ssl: dino")
                cfg = copy.deepcopy(cfg)
                cfg.augment.local_crops.number = 0
                plan = dataclasses.replace(plan, config=cfg)
        out.append(plan)
    return out


def plan_config(raw: Dict[str, Any], overrides: Sequence[str] = (),
                stages: Optional[Sequence[str]] = None, *, world_size: int = 1,
                handover: bool = False, first_init: Optional[InitRef] = None,
                where: str = "the config") -> ConfigPlan:
    """Phases for ``stages`` (default: every stage of the config, in order) of the raw
    config ``raw`` with ``overrides``; ``first_init`` replaces the first stage's init.
    Checks init references and datasets."""
    cfg = config_from_dict(raw, overrides)
    stages = list(stages) if stages else [s for s in STAGE_NAMES if s in cfg.stages]
    for stage in stages:
        if stage not in cfg.stages:
            raise HptError(f"stage '{stage}' is not defined in {where} "
                           f"(defined: {', '.join(cfg.stages) or 'none'})")
    target = tracking_target(cfg)
    base_layout = OutputLayout(Path(cfg.output_dir).resolve())
    phases: List[Phase] = []
    for i, stage in enumerate(stages):
        init = first_init if i == 0 else None
        if handover and i > 0:
            init = (InitRef.registered(target.model_name,
                                       alias_for(target.pipeline, stages[i - 1]))
                    if target else InitRef.stage_of(stages[i - 1]))
        cells = grid_cells(cfg, stage) if i == len(stages) - 1 else [GridCell(DEFAULT_CELL, {}, [])]
        plans = []
        for cell in cells:
            cell_cfg = config_from_dict(raw, list(overrides) + cell.overrides) \
                if cell.overrides else cfg
            ref = init or cell_cfg.stages[stage].init
            ref.check(base_layout.stage(stage), tuple(stages[:i]), who=f"stage '{stage}'")
            start = starting_point(ref, stages[i - 1] if handover and i > 0 else None)
            if ref.kind == "stage" and cell.overrides:
                ref = InitRef.file(base_layout.stage(ref.value).final)
            label = stage if cell.name == DEFAULT_CELL else f"{stage}-{cell.name}"
            plans.append(stage_plan(cell_cfg, stage, world_size=world_size, init=ref,
                                    label=label, tracking=target, start=start))
        check_data(plans)
        check_variants(plans)
        plans = check_local_crops(plans)
        phases.append(Phase(stage, plans, (stages[i - 1],) if i else ()))
    return ConfigPlan(cfg, target, phases)


def plan_stages(cfg: ExperimentConfig, stages: Optional[Sequence[str]] = None, *,
                world_size: int = 1, handover: bool = False) -> List[StagePlan]:
    """The stage plans of an already-built config, in order (grid cells included)."""
    return plan_config(config_to_dict(cfg), (), stages, world_size=world_size,
                       handover=handover).plans
