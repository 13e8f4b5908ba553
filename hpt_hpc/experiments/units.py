"""Methods, augmentation presets, and the expansion of studies into units of work.

A *pretrain unit* is one target-stage run (a method at a step budget, seed, augmentation
preset and amount of target data); an *eval unit* is one protocol (linear probe or
semi-supervised fine-tune) on one pretrain unit's checkpoint, or a reference (raw pixels,
random init). Units shared by several studies run once: ``B`` is ``Base`` and ``B+T`` is
``HPT``.
"""
from __future__ import annotations

import copy
import itertools
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..config import ConfigError
from ..config.loader import _suggest


@dataclass(frozen=True)
class Recipe:
    """How a method's target-stage checkpoint is made."""

    variant: Optional[str]  # None: nothing is trained (references)
    init: Optional[str]  # upstream stage it starts from: base | source | None (scratch)
    uses_steps: bool = True  # False: the step budget does not apply (BN statistics only)
    description: str = ""


METHODS: Dict[str, Recipe] = {
    "Base": Recipe("bn-stats", "base", False, "base model, BN statistics re-estimated on target"),
    "Target": Recipe("scratch", None, True, "MoCo-v2 from scratch on the target"),
    "HPT": Recipe("full", "base", True, "base -> target, all layers trained"),
    "HPT-BN": Recipe("bn", "base", True, "base -> target, only BatchNorm layers trained"),
    "B+S": Recipe("bn-stats", "source", False, "base -> source, BN statistics on target"),
    "B+S+T": Recipe("full", "source", True, "base -> source -> target"),
}
ALIASES = {"B": "Base", "B+T": "HPT"}
REFERENCES = {"raw-pixels": "linear probe on raw pixels",
              "random-init": "linear probe on a randomly initialised backbone"}
PROTOCOLS = ("linear", "finetune")
AUGMENTATIONS = ("crop", "color_jitter", "grayscale", "blur", "flip")
AUGMENT_PRESETS: Dict[str, Tuple[str, ...]] = {  # preset -> augmentations kept
    "all": AUGMENTATIONS,
    **{f"no-{a.replace('_', '-')}": tuple(x for x in AUGMENTATIONS if x != a)
       for a in AUGMENTATIONS},
    "crop+blur": ("crop", "blur"),
    "crop+flip": ("crop", "flip"),
    "crop+color-jitter": ("crop", "color_jitter"),
    "crop": ("crop",),
}
DEFAULT_BN_BATCHES = 50


def canonical_method(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in METHODS and name not in REFERENCES:
        valid = list(METHODS) + list(ALIASES) + list(REFERENCES)
        raise ConfigError(f"unknown method '{name}'{_suggest(name, valid)}; methods: "
                          f"{', '.join(valid)}")
    return name


@dataclass
class PretrainUnit:
    unit_id: str
    method: str
    dataset: str
    steps: int  # target pretraining steps (0 when the budget does not apply)
    seed: int
    augment: str = "all"
    images: Optional[int] = None  # None: every training image
    studies: List[str] = field(default_factory=list)

    def tags(self, sweep: str) -> Dict[str, str]:
        return {"hpt.sweep": sweep, "hpt.unit": self.unit_id, "hpt.unit_kind": "pretrain",
                "hpt.method": self.method, "hpt.dataset": self.dataset,
                "hpt.target_steps": str(self.steps), "hpt.seed": str(self.seed),
                "hpt.augment": self.augment, "hpt.images": str(self.images or "all"),
                "hpt.studies": ",".join(self.studies)}


@dataclass
class EvalUnit:
    unit_id: str
    protocol: str  # linear | finetune
    method: str
    dataset: str
    steps: int
    seed: int
    augment: str = "all"
    images: Optional[int] = None
    pretrain: Optional[str] = None  # the pretrain unit evaluated (None: a reference)
    studies: List[str] = field(default_factory=list)

    def tags(self, sweep: str) -> Dict[str, str]:
        return {"hpt.sweep": sweep, "hpt.unit": self.unit_id, "hpt.unit_kind": "eval",
                "hpt.protocol": self.protocol, "hpt.method": self.method,
                "hpt.dataset": self.dataset, "hpt.target_steps": str(self.steps),
                "hpt.seed": str(self.seed), "hpt.augment": self.augment,
                "hpt.images": str(self.images or "all"), "hpt.evaluates": self.pretrain or "none",
                "hpt.studies": ",".join(self.studies)}

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


@dataclass
class Expansion:
    """Everything a sweep needs: upstream stages to train, pretrain and eval units."""

    upstream: List[str]
    pretrain: List[PretrainUnit]
    evals: List[EvalUnit]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text.replace("+", "p"))


def _images(value: Any) -> Optional[int]:
    if value in (None, "all"):
        return None
    if isinstance(value, int) and value > 0:
        return value
    raise ConfigError(f"images: '{value}' is not a positive integer or 'all'")


def check_axes(spec: Any) -> None:
    """Reject unknown methods, presets, protocols and methods missing their upstream stage."""
    for study in spec.studies:
        for method in study.axes.get("method", []):
            name = canonical_method(str(method))
            recipe = METHODS.get(name)
            if recipe and recipe.init and recipe.init not in spec.upstream:
                raise ConfigError(f"studies.{study.name}: method '{method}' starts from the "
                                  f"'{recipe.init}' model; define upstream.{recipe.init}")
        for preset in study.axes.get("augment", []):
            if preset not in AUGMENT_PRESETS:
                raise ConfigError(f"studies.{study.name}.augment: unknown preset '{preset}'"
                                  f"{_suggest(str(preset), AUGMENT_PRESETS)}; presets: "
                                  f"{', '.join(AUGMENT_PRESETS)}")
        for protocol in study.axes.get("evaluate", []):
            if protocol not in PROTOCOLS:
                raise ConfigError(f"studies.{study.name}.evaluate: '{protocol}' is not one of "
                                  f"{', '.join(PROTOCOLS)}")
        for dataset in study.axes.get("dataset", []):
            if dataset not in spec.config.get("datasets", {}):
                raise ConfigError(f"studies.{study.name}.dataset: '{dataset}' is not defined "
                                  f"under datasets")
        for value in study.axes.get("images", []):
            _images(value)
        for value in study.axes.get("steps", []):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"studies.{study.name}.steps: '{value}' is not a positive "
                                  f"integer")
        if "dataset" not in study.axes:
            raise ConfigError(f"studies.{study.name}: give a dataset axis (the target "
                              f"dataset(s), e.g. dataset: [mnist])")


def expand(spec: Any) -> Expansion:
    """All units of all studies, deduplicated, in a stable order."""
    pretrain: Dict[str, PretrainUnit] = {}
    evals: Dict[str, EvalUnit] = {}
    default_steps = int(spec.config.get("optim", {}).get("iterations", 500))
    for study in spec.studies:
        axes = study.axes
        grid = itertools.product(axes.get("method", ["HPT"]),
                                 axes["dataset"],
                                 axes.get("steps", [default_steps]), axes.get("seed", [0]),
                                 axes.get("augment", ["all"]), axes.get("images", ["all"]),
                                 axes.get("evaluate", ["linear"]))
        for method, dataset, steps, seed, augment, images, protocol in grid:
            method, images = canonical_method(str(method)), _images(images)
            if method in REFERENCES:
                if protocol != "linear":
                    continue  # references are linear probes
                seed_part = f"-seed{seed}" if method == "random-init" else ""
                uid = f"ref-{method}-{dataset}{seed_part}-linear"
                unit = evals.setdefault(uid, EvalUnit(uid, "linear", method, dataset, 0,
                                                      int(seed) if seed_part else 0))
                _add_study(unit, study.name)
                continue
            recipe = METHODS[method]
            steps = int(steps) if recipe.uses_steps else 0
            parts = [_slug(method), _slug(str(dataset)), f"{steps}st", f"seed{seed}"]
            if augment != "all":
                parts.append(f"aug-{_slug(augment)}")
            if images is not None:
                parts.append(f"n{images}")
            pid = "-".join(parts)
            unit = pretrain.setdefault(pid, PretrainUnit(pid, method, dataset, steps, int(seed),
                                                         augment, images))
            _add_study(unit, study.name)
            eid = f"{pid}-{protocol}"
            ev = evals.setdefault(eid, EvalUnit(eid, protocol, method, dataset, steps,
                                                int(seed), augment, images, pid))
            _add_study(ev, study.name)
        if spec.references:
            for dataset in axes["dataset"]:
                for method in REFERENCES:
                    uid = f"ref-{method}-{dataset}" + ("-seed0" if method == "random-init"
                                                         else "") + "-linear"
                    unit = evals.setdefault(uid, EvalUnit(uid, "linear", method, dataset, 0, 0))
                    _add_study(unit, study.name)
    needed = {METHODS[u.method].init for u in pretrain.values()} - {None}
    if "source" in needed:
        needed.add("base")
    upstream = [s for s in ("base", "source") if s in needed
                and "checkpoint" not in spec.upstream.get(s, {})]
    return Expansion(upstream, list(pretrain.values()), list(evals.values()))


def _add_study(unit: Any, study: str) -> None:
    if study not in unit.studies:
        unit.studies.append(study)


def apply_augment_preset(config: Dict[str, Any], preset: str) -> None:
    """Switch off every augmentation the preset drops (in a raw config dict)."""
    keep = AUGMENT_PRESETS[preset]
    augment = config.setdefault("augment", {})
    for name in AUGMENTATIONS:
        if name not in keep:
            augment.setdefault(name, {})["enabled"] = False


def upstream_checkpoint(spec: Any, stage: str) -> Path:
    """The final checkpoint of an upstream stage (a given file, or the trained one)."""
    given = spec.upstream.get(stage, {}).get("checkpoint")
    if given:
        return Path(given).resolve()
    return spec.output_dir / "upstream" / stage / "checkpoints" / "final.pt"


def upstream_config(spec: Any) -> Dict[str, Any]:
    """The raw config of the shared upstream stages (``<output>/upstream/<stage>``)."""
    config = copy.deepcopy(spec.config)
    config["output_dir"] = str(spec.output_dir / "upstream")
    stages = {}
    for stage in ("base", "source"):
        settings = {k: v for k, v in spec.upstream.get(stage, {}).items() if k != "checkpoint"}
        if not settings:
            continue
        settings.setdefault("variant", "full")
        if stage == "source":
            settings["init"] = str(upstream_checkpoint(spec, "base"))
        stages[stage] = settings
    config["stages"] = stages
    return config


def unit_config(spec: Any, unit: PretrainUnit | EvalUnit,
                init_uri: Optional[str] = None) -> Dict[str, Any]:
    """The raw config of a unit: its target stage, data amount, augmentations and seed.

    ``init_uri`` replaces the upstream checkpoint file (e.g. a ``models:/`` registry URI).
    """
    config = copy.deepcopy(spec.config)
    pid = unit.unit_id if isinstance(unit, PretrainUnit) else (unit.pretrain or unit.unit_id)
    config["output_dir"] = str(spec.output_dir / "units" / pid)
    config["seed"] = unit.seed
    if unit.images is not None:
        config["datasets"][unit.dataset]["max_images"] = unit.images
    apply_augment_preset(config, unit.augment)
    recipe = METHODS.get(unit.method)
    if recipe is None:  # a reference: nothing to train
        config["stages"] = {}
        return config
    settings = dict(spec.methods.get(unit.method) or {})
    bn_batches = settings.pop("bn_batches", DEFAULT_BN_BATCHES)
    stage = {"dataset": unit.dataset, "variant": recipe.variant,
             "iterations": unit.steps if recipe.uses_steps else bn_batches}
    stage.update(settings)
    if recipe.init:
        stage["init"] = init_uri or str(upstream_checkpoint(spec, recipe.init))
    config["stages"] = {"target": stage}
    return config
