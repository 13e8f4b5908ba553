"""Studies of an experiment file expanded into units of work, and units into plans.

A *pretrain unit* is one target-stage run (a method at a step budget, seed, augmentation
preset and amount of target data); an *eval unit* is one protocol (linear probe or
semi-supervised fine-tune) on one pretrain unit's checkpoint, or a reference (raw pixels,
random init). Units shared by several studies run once: ``B`` is ``Base`` and ``B+T`` is
``HPT``. :mod:`.unit_plans` turns units into plans and phases.
"""
from __future__ import annotations

import hashlib
import itertools
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

from ..config import STAGE_NAMES, ConfigError
from ..config.loader import suggest
from ..config.protocols import LINEAR, PROTOCOLS as PROTOCOL_TABLE
from ..config.schema import PROBE_MODES
from .methods import METHODS, REFERENCES, method
from .plans import PROTOCOLS
from .spec import ExperimentSpec

DEFAULT_MODE = PROTOCOL_TABLE[LINEAR].default_mode  # a sweep's probe mode unless it says
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
UPSTREAM = STAGE_NAMES[:-1]  # shared stages before the target: base, source
CONTROL_STAGE = STAGE_NAMES[0]  # a continuing method's first stage: the base, continued
CONTROL_SUFFIX = "-continue"  # its unit id: <unit>-continue


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
    base_seed: int = 0  # the seed of the upstream stages it starts from
    keep_at: List[int] = field(default_factory=list)  # steps probed along it (checkpoint.at)

    def tags(self, sweep: str) -> Dict[str, str]:
        return {"hpt.sweep": sweep, "hpt.unit": self.unit_id, "hpt.unit_kind": "pretrain",
                "hpt.method": self.method, "hpt.dataset": self.dataset,
                "hpt.target_steps": str(self.steps), "hpt.seed": str(self.seed),
                "hpt.base_seed": str(self.base_seed),
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
    probe_mode: str = DEFAULT_MODE  # linear probes: a probe mode (config/protocols.py)
    probe_labels: Optional[int] = None  # linear probes: labelled images per class (None: all)
    overrides: Tuple[str, ...] = ()  # the study's probe.*/finetune.* overrides
    base_seed: int = 0
    along: int = 0  # the steps of the run probed at ``steps`` along the way (0: its final)

    def tags(self, sweep: str) -> Dict[str, str]:
        tags = {"hpt.sweep": sweep, "hpt.unit": self.unit_id, "hpt.unit_kind": "eval",
                "hpt.studies": ",".join(self.studies)}
        if self.overrides:
            tags["hpt.eval_overrides"] = " ".join(self.overrides)
        return tags


@dataclass
class Expansion:
    """Everything a sweep needs: upstream stages to train, pretrain and eval units."""

    upstream: List[str]
    pretrain: List[PretrainUnit]
    evals: List[EvalUnit]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=_-]+", "_", text.replace("+", "p"))


def _images(value: Any, axis: str = "images") -> Optional[int]:
    if value in (None, "all"):
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ConfigError(f"{axis}: '{value}' is not a positive integer or 'all'")


def _check_steps(where: str, values: List[Any]) -> None:
    for value in values:
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{where}: '{value}' is not a positive integer")


def check_axes(spec: ExperimentSpec) -> None:
    """Reject unknown methods, presets, protocols, datasets and step budgets, and methods
    missing their upstream stage."""
    for study in spec.studies:
        where = f"studies.{study.name}"
        names = [method(m).name for m in study.axes.get("method", [])]
        for name in names:
            start = METHODS[name].starts_from
            if start and start not in spec.upstream:
                raise ConfigError(f"{where}: method '{name}' starts from the '{start}' "
                                  f"model; define upstream.{start}")
            if METHODS[name].continues and "dataset" not in spec.upstream[start]:
                raise ConfigError(f"{where}: method '{name}' continues the {start} stage on "
                                  f"its data; give upstream.{start}.dataset")
        for preset in study.axes.get("augment", []):
            if preset not in AUGMENT_PRESETS:
                raise ConfigError(f"{where}.augment: unknown preset '{preset}'"
                                  f"{suggest(str(preset), AUGMENT_PRESETS)}; presets: "
                                  f"{', '.join(AUGMENT_PRESETS)}")
        for protocol in study.axes.get("evaluate", []):
            if protocol not in PROTOCOLS:
                raise ConfigError(f"{where}.evaluate: '{protocol}' is not one of "
                                  f"{', '.join(PROTOCOLS)}")
        for dataset in study.axes.get("dataset", []):
            if dataset not in spec.config.get("datasets", {}):
                raise ConfigError(f"{where}.dataset: '{dataset}' is not defined under "
                                  f"datasets")
        for value in study.axes.get("images", []):
            _images(value)
        for value in study.axes.get("base_seed", []):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{where}.base_seed: '{value}' is not a seed (an integer "
                                  f">= 0)")
            given = [st for st in UPSTREAM if "checkpoint" in spec.upstream.get(st, {})]
            if value and given:
                raise ConfigError(f"{where}.base_seed: upstream.{given[0]} is a given "
                                  f"checkpoint, which has no seed to vary; train it "
                                  f"(upstream.{given[0]}.dataset) or drop base_seed")
        for value in study.axes.get("probe_labels", []):
            _images(value, f"{where}.probe_labels")
        for value in study.axes.get("probe_mode", []):
            if value not in PROBE_MODES:
                raise ConfigError(f"{where}.probe_mode: '{value}' is not one of "
                                  f"{', '.join(PROBE_MODES)}")
        _check_per_method(study, "steps", names, f"{where}.steps")
        if "dataset" not in study.axes:
            raise ConfigError(f"{where}: give a dataset axis (the target dataset(s), e.g. "
                              f"dataset: [mnist])")
    _check_probes(spec)


def _check_per_method(study, axis: str, names: List[str], where: str) -> None:
    """A steps-like ``axis``: a list of steps, or ``{method or default: steps}`` (each key
    a method of the study, stored by its table name)."""
    values = study.axes.get(axis, [])
    if not isinstance(values, dict):
        _check_steps(where, values)
        return
    for key, steps in values.items():
        if key != "default" and method(key).name not in names:
            raise ConfigError(f"{where}: '{key}' is not a method of this study "
                              f"({', '.join(names) or 'none'}) nor 'default'")
        _check_steps(f"{where}.{key}", steps)
    study.axes[axis] = {("default" if k == "default" else method(k).name): v
                        for k, v in values.items()}


def _check_probes(spec: ExperimentSpec) -> None:
    """``probe_at``: positive steps below the one budget of each method probed; a method's
    step is a budget or a step probed along runs of one length, never both (a cell holds
    one schedule)."""
    default = int(spec.config.get("optim", {}).get("iterations", 500))
    budgets: Dict[str, set] = {}
    along: Dict[Tuple[str, int], int] = {}  # (method, step probed) -> the run's steps
    for study in spec.studies:
        where = f"studies.{study.name}.probe_at"
        names = [method(m).name for m in study.axes.get("method", ["HPT"])]
        _check_per_method(study, "probe_at", names, where)
        for name in (n for n in names if METHODS[n].uses_steps):
            steps, at = study.steps_for(name, default), study.probes_for(name)
            budgets.setdefault(name, set()).update(steps)
            if not at:
                continue
            if METHODS[name].continues:
                raise ConfigError(f"{where}: '{name}' continues the base stage before its "
                                  f"target stage; give its budgets as steps instead")
            if len(steps) != 1:
                raise ConfigError(f"{where}: '{name}' has {len(steps)} budgets "
                                  f"({', '.join(map(str, steps))}); probing along the way "
                                  f"trains one run per seed: give it its longest budget only")
            late = [s for s in at if s >= steps[0]]
            if late:
                raise ConfigError(f"{where}: step {late[0]} is not below {name}'s budget of "
                                  f"{steps[0]} steps")
            for s in at:
                if along.setdefault((name, s), steps[0]) != steps[0]:
                    raise ConfigError(f"{where}: {name}@{s} is probed along runs of "
                                      f"{along[(name, s)]} and {steps[0]} steps; one length")
    for (name, s), length in along.items():
        if s in budgets.get(name, ()):
            raise ConfigError(f"studies: {name}@{s} is both a budget and a checkpoint probed "
                              f"along {length}-step runs (two schedules in one cell); drop "
                              f"one")


def expand(spec: ExperimentSpec) -> Expansion:
    """All units of all studies, deduplicated, in a stable order."""
    units = _Units()
    default_steps = int(spec.config.get("optim", {}).get("iterations", 500))
    for study in spec.studies:
        axes = study.axes
        probing = list(itertools.product(axes.get("probe_mode", [DEFAULT_MODE]),
                                         axes.get("probe_labels", ["all"])))
        for name, dataset in itertools.product(axes.get("method", ["HPT"]), axes["dataset"]):
            name = method(name).name
            bases = axes.get("base_seed", [0]) if METHODS[name].starts_from else [0]
            probes = tuple(sorted(set(study.probes_for(name)))) \
                if METHODS[name].uses_steps else ()
            grid = itertools.product(study.steps_for(name, default_steps),
                                     axes.get("seed", [0]), bases,
                                     axes.get("augment", ["all"]),
                                     axes.get("images", ["all"]),
                                     axes.get("evaluate", [LINEAR]), probing)
            for steps, seed, base, augment, images, protocol, (mode, labels) in grid:
                units.add(GridPoint(study.name, name, dataset, steps, int(seed), augment,
                                    _images(images), protocol, mode, _images(labels),
                                    tuple(study.evaluation), spec.ssl_suffix, int(base),
                                    probes))
        if spec.references:  # cached; random init also in the study's other probe modes
            modes = [(DEFAULT_MODE, labels) for labels in axes.get("probe_labels", ["all"])]
            for dataset, (mode, labels) in itertools.product(
                    axes["dataset"], modes + [p for p in probing if p[0] != DEFAULT_MODE]):
                for ref in REFERENCES:  # (a claim's precondition compares in its own mode)
                    if ref != "random-init" and mode != DEFAULT_MODE:
                        continue
                    overrides = tuple(study.evaluation) if mode != DEFAULT_MODE else ()
                    for seed in (axes.get("seed", [0]) if ref == "random-init" else [0]):
                        units.add(GridPoint(study.name, ref, dataset, 0, int(seed), "all",
                                            None, LINEAR, mode, _images(labels),
                                            overrides))
    pretrain, evals = units.pretrain, units.evals
    needed = {METHODS[u.method].starts_from for u in pretrain.values()} - {None}
    if "source" in needed:
        needed.add("base")
    upstream = [s for s in UPSTREAM if s in needed and "checkpoint" not in spec.upstream.get(s, {})]
    return Expansion(upstream, list(pretrain.values()), list(evals.values()))


def _probe_part(protocol: str, mode: str, labels: Optional[int],
                overrides: Tuple[str, ...] = ()) -> str:
    """The evaluation's id suffix: protocol, then non-default probing choices, then a
    short hash of a study's evaluation overrides."""
    parts = [protocol]
    if PROTOCOL_TABLE[protocol].modes:  # the linear probe's non-default mode and labels
        parts += ([mode] if mode != DEFAULT_MODE else []) + ([f"{labels}pc"] if labels else [])
    if overrides:
        parts.append("s" + hashlib.sha256("\n".join(overrides).encode()).hexdigest()[:6])
    return "-".join(parts)


@dataclass(frozen=True)
class GridPoint:
    """One point of a study's grid: a method's pretraining coordinates and one evaluation
    of it (``ssl``: the sweep's ssl suffix of unit ids)."""

    study: str
    method: str
    dataset: str
    steps: int
    seed: int
    augment: str
    images: Optional[int]
    protocol: str
    mode: str = DEFAULT_MODE
    labels: Optional[int] = None
    overrides: Tuple[str, ...] = ()
    ssl: str = ""
    base_seed: int = 0
    probes: Tuple[int, ...] = ()  # steps at which the run is also evaluated


@dataclass
class _Units:
    """The units of an expansion by id (a unit several studies share is kept once)."""

    pretrain: Dict[str, PretrainUnit] = field(default_factory=dict)
    evals: Dict[str, EvalUnit] = field(default_factory=dict)

    def add(self, p: GridPoint) -> None:
        """The pretraining unit and the evaluation of one grid point (a reference: the
        evaluation alone; references are linear probes only)."""
        probe = _probe_part(p.protocol, p.mode, p.labels, p.overrides)
        mode, labels = (p.mode, p.labels) if p.protocol == LINEAR else (DEFAULT_MODE, None)
        if p.method in REFERENCES:
            if p.protocol != LINEAR:
                return
            seed_part = f"-seed{p.seed}" if p.method == "random-init" else ""
            uid = f"ref-{p.method}-{p.dataset}{seed_part}-{probe}"
            _add_study(self.evals.setdefault(uid, EvalUnit(
                uid, LINEAR, p.method, p.dataset, 0, p.seed if seed_part else 0,
                probe_mode=mode, probe_labels=labels, overrides=p.overrides)), p.study)
            return
        steps = int(p.steps) if METHODS[p.method].uses_steps else 0
        parts = [_slug(p.method), _slug(str(p.dataset)), f"{steps}st", f"seed{p.seed}"]
        if p.base_seed:  # base seed 0: the ids of every earlier sweep
            parts.append(f"b{p.base_seed}")
        if p.augment != "all":
            parts.append(f"aug-{_slug(p.augment)}")
        if p.images is not None:
            parts.append(f"n{p.images}")
        pid = "-".join(parts) + p.ssl  # the ssl method's part (none for MoCo-v2)
        unit = self.pretrain.setdefault(pid, PretrainUnit(
            pid, p.method, p.dataset, steps, p.seed, p.augment, p.images,
            base_seed=p.base_seed))
        _add_study(unit, p.study)
        unit.keep_at = sorted(set(unit.keep_at) | set(p.probes))
        for at in (*p.probes, 0):  # the checkpoints probed along the way, then the final
            eid = f"{pid}-at{at}-{probe}" if at else f"{pid}-{probe}"
            _add_study(self.evals.setdefault(eid, EvalUnit(
                eid, p.protocol, p.method, p.dataset, at or steps, p.seed, p.augment,
                p.images, pid, probe_mode=mode, probe_labels=labels, overrides=p.overrides,
                base_seed=p.base_seed, along=steps if at else 0)), p.study)


def _add_study(unit: Union[PretrainUnit, EvalUnit], study: str) -> None:
    if study not in unit.studies:
        unit.studies.append(study)


def apply_augment_preset(config: Dict[str, Any], preset: str) -> None:
    """Switch off every augmentation the preset drops (in a raw config dict)."""
    keep = AUGMENT_PRESETS[preset]
    augment = config.setdefault("augment", {})
    for name in AUGMENTATIONS:
        if name not in keep:
            augment.setdefault(name, {})["enabled"] = False
