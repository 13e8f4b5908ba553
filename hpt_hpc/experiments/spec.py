"""Experiment files (``configs/experiments/<name>.yaml``): the grids of the paper's studies.

An experiment file names a base config (the model, MoCo, data and probe settings), the
shared upstream stages (base, optional source) and one or more *studies*, each a grid::

    name: mnist-hpt                  # MLflow experiment and sweep id
    config: ../quickstart.yaml       # relative to this file
    set: ["probe.repeats=3"]         # overrides on that config
    datasets: {mnist-source: {path: data/mnist-source}}
    prepare: {mnist: mnist}          # offline datasets written when missing
    output_dir: outputs/experiments/mnist-hpt
    upstream:
      base: {dataset: fashion-mnist, iterations: 3000}   # or {checkpoint: base.pt}
      source: {dataset: mnist-source, iterations: 1000}   # starts from base
    methods: {HPT-BN: {lr: 0.1}, Base: {bn_batches: 50}}
    studies:
      main: {method: [Base, Target, HPT, HPT-BN], dataset: [mnist], steps: [50, 500]}
      augmentation: {method: [Target, HPT], steps: [500], augment: [all, crop]}

Grid axes: ``method``, ``dataset`` (target), ``steps`` (target pretraining steps),
``seed``, ``augment`` (preset names, see :mod:`.units`), ``images`` (target pretraining
images: an integer or ``all``) and ``evaluate`` (protocols: ``linear``, ``finetune``).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence

import yaml

from ..config import ConfigError, ExperimentConfig, config_from_dict
from ..config.loader import _suggest, apply_overrides

SPEC_KEYS = ("name", "config", "set", "datasets", "prepare", "output_dir", "upstream",
             "methods", "studies", "references")
AXES = ("method", "dataset", "steps", "seed", "augment", "images", "evaluate")
UPSTREAM_KEYS = ("dataset", "iterations", "lr", "batch_size", "variant", "checkpoint")
METHOD_KEYS = ("lr", "bn_batches", "batch_size")


@dataclass
class Study:
    """One grid; every axis a list (defaults fill the missing ones)."""

    name: str
    axes: Dict[str, List[Any]]


@dataclass
class SweepSpec:
    """A parsed experiment file; ``config`` is the base config as a raw dict."""

    name: str
    path: Path
    config: Dict[str, Any]
    output_dir: Path
    upstream: Dict[str, Dict[str, Any]]
    methods: Dict[str, Dict[str, Any]]
    studies: List[Study]
    prepare: Dict[str, str] = field(default_factory=dict)
    references: bool = True

    def base_config(self) -> ExperimentConfig:
        return config_from_dict(copy.deepcopy(self.config))


def _check_keys(where: str, data: Dict[str, Any], valid: Sequence[str]) -> None:
    for key in data:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key '{key}'{_suggest(key, valid)}; valid: "
                              f"{', '.join(valid)}")


def _as_list(where: str, value: Any) -> List[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: expected a non-empty list")
    return values


def load_sweep_spec(path: str, overrides: Sequence[str] = ()) -> SweepSpec:
    """Read and check an experiment file; ``overrides`` (``key=value``) apply to its config."""
    from .units import check_axes
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"experiment file '{path}' does not exist")
    data = yaml.safe_load(file.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    _check_keys(str(path), data, SPEC_KEYS)
    for key in ("name", "config", "studies"):
        if key not in data:
            raise ConfigError(f"{path}: '{key}' is required")
    config_path = (file.parent / data["config"]).resolve()
    if not config_path.is_file():
        raise ConfigError(f"{path}: config '{data['config']}' not found ({config_path})")
    raw = yaml.safe_load(config_path.read_text()) or {}
    for name, ds in (data.get("datasets") or {}).items():
        raw.setdefault("datasets", {})[name] = {**raw.get("datasets", {}).get(name, {}), **ds}
    raw["name"] = data["name"]
    raw.setdefault("tracking", {})
    raw["tracking"]["experiment"] = raw["tracking"].get("experiment") or data["name"]
    out = Path(data.get("output_dir") or f"outputs/experiments/{data['name']}").resolve()
    raw["output_dir"] = str(out)
    raw["stages"] = {}
    raw = apply_overrides(raw, list(data.get("set") or []) + list(overrides))
    config_from_dict(copy.deepcopy(raw))  # validate early: unknown keys, bad values
    out = Path(raw["output_dir"]).resolve()

    upstream = data.get("upstream") or {}
    _check_keys(f"{path}: upstream", upstream, ("base", "source"))
    for stage, settings in upstream.items():
        _check_keys(f"{path}: upstream.{stage}", settings, UPSTREAM_KEYS)
        if "checkpoint" not in settings and "dataset" not in settings:
            raise ConfigError(f"{path}: upstream.{stage} needs a dataset (to train) or a "
                              f"checkpoint (an existing model)")
        if settings.get("dataset") and settings["dataset"] not in raw.get("datasets", {}):
            raise ConfigError(f"{path}: upstream.{stage}.dataset '{settings['dataset']}' is "
                              f"not defined under datasets")
    if "source" in upstream and "base" not in upstream:
        raise ConfigError(f"{path}: upstream.source starts from upstream.base; define base")
    methods = data.get("methods") or {}
    for method, settings in methods.items():
        _check_keys(f"{path}: methods.{method}", settings or {}, METHOD_KEYS)

    studies = []
    for name, axes in (data.get("studies") or {}).items():
        _check_keys(f"{path}: studies.{name}", axes or {}, AXES)
        lists = {k: _as_list(f"{path}: studies.{name}.{k}", v) for k, v in axes.items()}
        studies.append(Study(name, lists))
    if not studies:
        raise ConfigError(f"{path}: 'studies' must define at least one grid")
    spec = SweepSpec(name=data["name"], path=file.resolve(), config=raw, output_dir=out,
                     upstream=upstream, methods=methods, studies=studies,
                     prepare=dict(data.get("prepare") or {}),
                     references=bool(data.get("references", True)))
    check_axes(spec)
    return spec


def prepare_offline_data(spec: SweepSpec) -> List[str]:
    """Write the ``prepare`` datasets that are missing (offline sources only)."""
    from ..data.prepare import prepare_dataset
    done = []
    for dataset, source in spec.prepare.items():
        ds = spec.config.get("datasets", {}).get(dataset)
        if ds is None:
            raise ConfigError(f"prepare: dataset '{dataset}' is not defined under datasets")
        path = Path(ds["path"]).resolve()
        prepare_dataset(source, str(path))
        ds["path"] = str(path)
        done.append(dataset)
    return done

