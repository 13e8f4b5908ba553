"""Units of a sweep (:mod:`.units`) turned into plans: the raw configs of the shared
upstream stages and of each unit, their starting points (files or registry aliases), and
:func:`sweep_phases`: upstream stages, one array of pretraining units, one array of
evaluations."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

from ..config import InitRef, config_from_dict
from ..config.loader import apply_overrides
from ..tracking.registry import alias_for
from .methods import METHODS, upstream_method
from .planner import check_variants, stage_plan
from .plans import EvalPlan, Phase, StagePlan, TrackingTarget
from .spec import ExperimentSpec
from .units import (CONTROL_STAGE, CONTROL_SUFFIX, DEFAULT_BN_BATCHES, UPSTREAM, EvalUnit,
                    Expansion, PretrainUnit, apply_augment_preset)


def upstream_config(spec: ExperimentSpec, base_seed: int = 0) -> Dict[str, Any]:
    """The raw config of the shared upstream stages (``<output>/upstream/<stage>``; base
    seed n > 0: ``upstream-b<n>``, trained with the config's seed + n)."""
    config = copy.deepcopy(spec.config)
    config["output_dir"] = str(spec.upstream_layout("base", base_seed).output_dir)
    if base_seed:
        config["seed"] = int(config.get("seed", 0)) + base_seed
    stages = {}
    for stage in UPSTREAM:
        settings = {k: v for k, v in spec.upstream.get(stage, {}).items() if k != "checkpoint"}
        if not settings:
            continue
        settings.setdefault("variant", "full")
        if stage == "source":
            settings["init"] = str(spec.upstream_checkpoint("base", base_seed))
        stages[stage] = settings
    config["stages"] = stages
    return config


def unit_config(spec: ExperimentSpec, unit: PretrainUnit,
                init_uri: Optional[str] = None) -> Dict[str, Any]:
    """The raw config of a unit: its target stage, data amount, augmentations and seed.

    ``init_uri`` replaces the upstream checkpoint file (e.g. a ``models:/`` registry URI).
    """
    config = copy.deepcopy(spec.config)
    pid = unit.unit_id if isinstance(unit, PretrainUnit) else (unit.pretrain or unit.unit_id)
    config["output_dir"] = str(spec.layout.unit_dir(pid))
    config["seed"] = unit.seed
    if unit.images is not None:
        config["datasets"][unit.dataset]["max_images"] = unit.images
    if isinstance(unit, PretrainUnit) and unit.keep_at:  # kept as step-<n>.pt to probe
        config.setdefault("checkpoint", {})["at"] = list(unit.keep_at)
    apply_augment_preset(config, unit.augment)
    recipe = METHODS[unit.method]
    if isinstance(unit, EvalUnit):
        config.setdefault("probe", {}).update(mode=unit.probe_mode,
                                              labels_per_class=unit.probe_labels)
        config = apply_overrides(config, unit.overrides)
    if recipe.is_reference or isinstance(unit, EvalUnit):
        config["stages"] = {}
        return config
    settings = dict(spec.methods.get(unit.method) or {})
    bn_batches = settings.pop("bn_batches", DEFAULT_BN_BATCHES)
    start = init_uri or str(spec.upstream_checkpoint(recipe.starts_from, unit.base_seed)) \
        if recipe.starts_from else None
    stage = {"dataset": unit.dataset, "variant": recipe.variant,
             "iterations": unit.steps if recipe.uses_steps and not recipe.continues
             else bn_batches, "init": start, "train_head": recipe.train_head}
    stage.update(settings)
    config["stages"] = {"target": stage}
    if recipe.continues:  # the budget is spent on the upstream stage's own data first
        upstream = {k: v for k, v in spec.upstream[recipe.starts_from].items()
                    if k in ("dataset", "lr", "batch_size")}
        config["stages"] = {CONTROL_STAGE: {**upstream, "variant": "full", "init": start,
                                            "iterations": unit.steps},
                            "target": {**stage, "init": InitRef.stage_of(CONTROL_STAGE).text}}
    return config


def registry_init(spec: ExperimentSpec, tracking: Optional[TrackingTarget], stage: str,
                  base_seed: int = 0) -> Optional[str]:
    """Units start from an upstream stage through the MLflow registry when tracked
    (``models:/<model>@<sweep>-<stage>``), else from its file (``None``)."""
    if tracking is None or "checkpoint" in spec.upstream.get(stage, {}):
        return None
    return InitRef.registered(tracking.model_name, alias_for(
        tracking.pipeline, f"{stage}{spec.upstream_suffix(base_seed)}")).text



def upstream_plans(spec: ExperimentSpec, tracking: Optional[TrackingTarget], stages: List[str],
                   world_size: int = 1, base_seed: int = 0) -> List[StagePlan]:
    """Plans of the shared upstream stages of one base seed (source starts from base)."""
    cfg = config_from_dict(upstream_config(spec, base_seed))
    plans = []
    for stage in stages:
        init = registry_init(spec, tracking, "base", base_seed) if stage == "source" else None
        tags = {"hpt.sweep": spec.name, "hpt.unit": spec.upstream_id(stage, base_seed),
                "hpt.unit_kind": "upstream", "hpt.base_seed": str(base_seed)}
        plans.append(stage_plan(cfg, stage, world_size=world_size,
                                label=f"{stage}{spec.upstream_suffix(base_seed)}",  # alias
                                init=InitRef.parse(init) if init else None,
                                method=upstream_method(stage, spec.ssl), tags=tags,
                                tracking=tracking))
    return plans


def _unit_config(spec: ExperimentSpec, unit: PretrainUnit, tracking: Optional[TrackingTarget]):
    start = METHODS[unit.method].starts_from
    return config_from_dict(unit_config(spec, unit, registry_init(spec, tracking, start,
                                                                  unit.base_seed)
                                        if start else None))


def pretrain_plan(spec: ExperimentSpec, unit: PretrainUnit, tracking: Optional[TrackingTarget],
                  world_size: int = 1) -> StagePlan:
    """The unit's target stage."""
    return stage_plan(_unit_config(spec, unit, tracking), "target", world_size=world_size,
                      label=unit.unit_id, method=unit.method, tags=unit.tags(spec.name),
                      tracking=tracking, budget=unit.steps)


def control_plan(spec: ExperimentSpec, unit: PretrainUnit, tracking: Optional[TrackingTarget],
                 world_size: int = 1) -> StagePlan:
    """A continuing method's first stage: the upstream stage trained on for the unit's
    step budget on its own data (``<unit>/base``), in the unit's seed."""
    uid = control_id(unit)
    tags = {**unit.tags(spec.name), "hpt.unit": uid, "hpt.unit_kind": "control"}
    return stage_plan(_unit_config(spec, unit, tracking), CONTROL_STAGE,
                      world_size=world_size, label=uid, method=unit.method, tags=tags,
                      tracking=tracking, budget=unit.steps)


def control_id(unit: PretrainUnit) -> str:
    return f"{unit.unit_id}{CONTROL_SUFFIX}"


def eval_plan(spec: ExperimentSpec, unit: EvalUnit, tracking: Optional[TrackingTarget]) -> EvalPlan:
    cfg = config_from_dict(unit_config(spec, unit))
    layout = spec.layout.unit_stage(unit.pretrain) if unit.pretrain else None
    checkpoint = InitRef.file(layout.kept(unit.steps) if unit.along else layout.final) \
        if layout else InitRef()
    return EvalPlan(cfg, unit.protocol, unit.method, unit.dataset, checkpoint, unit.unit_id,
                    layout, spec.layout.eval_result(unit.pretrain or unit.unit_id, unit.unit_id),
                    tracking, unit.steps, unit.seed, unit.augment, str(unit.images or "all"),
                    unit.pretrain, unit.tags(spec.name), str(unit.probe_labels or "all"),
                    resumable=True, stage=layout.stage if layout else None,
                    base_seed=unit.base_seed, along=unit.along)


def pretrain_phase(method: str) -> Tuple[str, Tuple[str, ...]]:
    """The phase of a method's pretraining units and the one phase it waits for: units
    from scratch wait for nothing, the others only for the stage they start from."""
    m = METHODS[method]
    if m.continues:
        return "pretrain-continued", ("control",)
    if m.starts_from is None:
        return "pretrain-scratch", ()
    return ("pretrain" if m.starts_from == "base" else f"pretrain-{m.starts_from}",
            (f"upstream-{m.starts_from}",))


def sweep_phases(spec: ExperimentSpec, expansion: Expansion, tracking: Optional[TrackingTarget],
                 skip: frozenset = frozenset(), world_size: int = 1) -> List[Phase]:
    """Upstream stages (``afterok``) -> pretraining units, one phase (array) per stage they
    start from, each waiting only for that stage (``afterok``; from scratch: nothing) ->
    one phase of evaluations (``afterany`` on every pretraining phase: an evaluation whose
    checkpoint is missing fails alone). Units whose id is in ``skip`` are left out."""
    phases = []
    for stage in expansion.upstream:  # one phase per stage: every base seed's plan
        plans = [plan for b in spec.base_seeds if spec.upstream_id(stage, b) not in skip
                 for plan in upstream_plans(spec, tracking, [stage], world_size, b)]
        if plans:
            phases.append(Phase(f"upstream-{stage}", plans,
                                ("upstream-base",) if stage == "source" else ()))
    phases.append(Phase("control", [control_plan(spec, u, tracking, world_size)
                                    for u in expansion.pretrain
                                    if METHODS[u.method].continues
                                    and control_id(u) not in skip], ("upstream-base",)))
    groups: Dict[str, Phase] = {}
    for unit in expansion.pretrain:
        if unit.unit_id in skip:
            continue
        name, after = pretrain_phase(unit.method)
        groups.setdefault(name, Phase(name, [], after)).plans.append(
            pretrain_plan(spec, unit, tracking, world_size))
    check_variants([plan for group in groups.values() for plan in group.plans])
    phases += sorted(groups.values(), key=lambda p: (len(p.after), p.name))  # free first
    phases.append(Phase("eval", [eval_plan(spec, u, tracking)
                                 for u in expansion.evals if u.unit_id not in skip],
                        tuple(sorted(groups)), "afterany"))
    return phases
