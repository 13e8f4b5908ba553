"""Experiment files (``configs/experiments/<name>.yaml``): the grids of the paper's studies.

An experiment file names a base config (the model, MoCo, data and probe settings), the
shared upstream stages (base, optional source) and one or more *studies*, each a grid::

    name: mnist-hpt                  # MLflow experiment, sweep id, registry aliases
    config: ../quickstart.yaml       # the base config
    set: ["probe.repeats=3"]         # overrides on that config
    datasets: {mnist-source: {path: ../../data/mnist-source}}
    prepare: {mnist: mnist}          # offline datasets written when missing
    output_dir: ../../outputs/experiments/mnist-hpt
    upstream:
      base: {dataset: fashion-mnist, iterations: 3000}   # or {checkpoint: base.pt}
      source: {dataset: mnist-source, iterations: 1000}   # starts from base
    methods: {HPT-BN: {lr: 0.1}, Base: {bn_batches: 50}}
    studies:
      main: {method: [Base, Target, HPT, HPT-BN], dataset: [mnist],
             steps: {default: [50, 500], Target: [500, 2000]}}
      augmentation: {method: [Target, HPT], steps: [500], augment: [all, crop]}

A study's ``set: [probe.iterations=500, ...]`` changes only its own evaluations (their
unit ids carry a short hash of it, so they never merge with other studies' evaluations).

Every relative path in the file (``config``, ``output_dir``, ``datasets.*.path``,
``upstream.*.checkpoint``) is relative to the file itself. Grid axes: ``method``,
``dataset`` (target), ``steps`` (target pretraining steps: a list for every method, or a
mapping ``{<method>: [...], default: [...]}``), ``seed`` (target seeds), ``base_seed``
(seeds of the shared upstream stages: each base seed trains its own base and source,
``upstream-b<n>/`` for n > 0, and the units starting from them), ``augment`` (preset names, see
:mod:`.units`), ``images`` (target pretraining images: an integer or ``all``) and
``evaluate`` (protocols: ``linear``, ``finetune``); ``probe_at`` (steps at which each
run is also evaluated along the way, from one run per seed at its one longer budget: a
list, or a mapping like ``steps``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..config import ConfigError, config_from_dict
from ..config.layout import EXPERIMENTS, folder_name
from ..config.loader import apply_overrides, read_config_dict, suggest
from ..data.prepare import prepare_dataset
from .methods import CLAIM_NUMBERS
from .spec import ExperimentSpec, Study
from .units import UPSTREAM, check_axes

SPEC_KEYS = ("name", "config", "set", "datasets", "prepare", "output_dir", "upstream",
             "methods", "studies", "references", "caveats")
AXES = ("method", "dataset", "steps", "seed", "base_seed", "augment", "images", "evaluate",
        "probe_mode", "probe_labels", "probe_at")
UPSTREAM_KEYS = ("dataset", "iterations", "lr", "batch_size", "variant", "checkpoint")
METHOD_KEYS = ("lr", "bn_batches", "batch_size", "blocks", "lora")  # target-stage settings
def _check_keys(where: str, data: Dict[str, Any], valid: Sequence[str]) -> None:
    for key in data:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key '{key}'{suggest(key, valid)}; valid: "
                              f"{', '.join(valid)}")


def _as_list(where: str, value: Any) -> List[Any]:
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}: expected a non-empty list")
    return values


def _axes(where: str, axes: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in axes.items():
        if key in ("steps", "probe_at") and isinstance(value, dict):
            out[key] = {str(m): _as_list(f"{where}.{key}.{m}", v) for m, v in value.items()}
            if not out[key]:
                raise ConfigError(f"{where}.{key}: expected a list or a non-empty mapping")
        else:
            out[key] = _as_list(f"{where}.{key}", value)
    return out


def _caveats(where: str, value: Any) -> Dict[str, str]:
    """``caveats``: ``{<claim number>: <text>}``, printed with that claim's verdict (what
    the study's design cannot show, e.g. a source from the target's own domain)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping of claim number to text, e.g. "
                          f"{{3: \"the source is ...\"}}")
    out = {}
    for number, text in value.items():
        if str(number) not in CLAIM_NUMBERS:
            raise ConfigError(f"{where}: '{number}' is not a claim (claims: "
                              f"{', '.join(CLAIM_NUMBERS)})")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}.{number}: expected a non-empty text")
        out[str(number)] = " ".join(text.split())
    return out


def _relative_to(folder: Path, path: Any) -> str:
    return str((folder / Path(str(path)).expanduser()).resolve())


def load_experiment(path: str, overrides: Sequence[str] = (),
                    output_dir: Optional[str] = None) -> ExperimentSpec:
    """Read and check an experiment file; ``overrides`` (``key=value``) apply to its
    config; ``output_dir`` replaces the file's."""
    file = Path(path)
    data = read_config_dict(file, "experiment")
    _check_keys(str(path), data, SPEC_KEYS)
    for key in ("name", "config", "studies"):
        if key not in data:
            raise ConfigError(f"{path}: '{key}' is required")
    data["name"] = folder_name(data["name"], f"{path}: name")
    here = Path(os.path.abspath(file)).parent  # the file as named: symlinks not followed
    config_path = Path(_relative_to(here, data["config"]))
    if not config_path.is_file():
        raise ConfigError(f"{path}: config '{data['config']}' not found ({config_path})")
    raw = read_config_dict(config_path)
    for name, ds in (data.get("datasets") or {}).items():
        ds = dict(ds or {})
        if "path" in ds:
            ds["path"] = _relative_to(here, ds["path"])
        raw.setdefault("datasets", {})[name] = {**raw.get("datasets", {}).get(name, {}), **ds}
    raw["name"] = data["name"]
    raw.setdefault("tracking", {})
    raw["tracking"]["experiment"] = raw["tracking"].get("experiment") or data["name"]
    if output_dir is not None:  # from the command line: relative to the working dir
        raw["output_dir"] = str(Path(output_dir).resolve())
    elif data.get("output_dir"):
        raw["output_dir"] = _relative_to(here, data["output_dir"])
    else:
        raw["output_dir"] = str((EXPERIMENTS / data["name"]).resolve())
    raw["stages"] = {}
    raw = apply_overrides(raw, list(data.get("set") or []) + list(overrides))
    ssl = config_from_dict(raw).ssl  # validate early: unknown keys, bad values
    out = Path(raw["output_dir"]).resolve()
    raw["output_dir"] = str(out)

    upstream = {k: dict(v or {}) for k, v in (data.get("upstream") or {}).items()}
    _check_keys(f"{path}: upstream", upstream, UPSTREAM)
    for stage, settings in upstream.items():
        _check_keys(f"{path}: upstream.{stage}", settings, UPSTREAM_KEYS)
        if "checkpoint" not in settings and "dataset" not in settings:
            raise ConfigError(f"{path}: upstream.{stage} needs a dataset (to train) or a "
                              f"checkpoint (an existing model)")
        if settings.get("dataset") and settings["dataset"] not in raw.get("datasets", {}):
            raise ConfigError(f"{path}: upstream.{stage}.dataset '{settings['dataset']}' is "
                              f"not defined under datasets")
        if "checkpoint" in settings:
            settings["checkpoint"] = _relative_to(here, settings["checkpoint"])
            if not Path(settings["checkpoint"]).is_file():
                raise ConfigError(f"{path}: upstream.{stage}.checkpoint "
                                  f"{settings['checkpoint']} does not exist")
    if "source" in upstream and "base" not in upstream:
        raise ConfigError(f"{path}: upstream.source starts from upstream.base; define base")
    methods = data.get("methods") or {}
    for method, settings in methods.items():
        _check_keys(f"{path}: methods.{method}", settings or {}, METHOD_KEYS)

    caveats = _caveats(f"{path}: caveats", data.get("caveats"))
    studies = []
    for name, axes in (data.get("studies") or {}).items():
        axes = dict(axes or {})
        evaluation = [str(s) for s in _as_list(f"{path}: studies.{name}.set",
                                               axes.pop("set"))] if "set" in axes else []
        for item in evaluation:
            if not item.startswith(("probe.", "finetune.")) or "=" not in item:
                raise ConfigError(f"{path}: studies.{name}.set: '{item}' is not a "
                                  f"probe.<key>=<value> or finetune.<key>=<value> override "
                                  f"(a study's set changes only its evaluations)")
        _check_keys(f"{path}: studies.{name}", axes, AXES)
        studies.append(Study(name, _axes(f"{path}: studies.{name}", axes), evaluation))
    if not studies:
        raise ConfigError(f"{path}: 'studies' must define at least one grid")
    spec = ExperimentSpec(name=data["name"], path=file.resolve(), config=raw, output_dir=out,
                          upstream=upstream, methods=methods, studies=studies,
                          prepare=dict(data.get("prepare") or {}),
                          references=bool(data.get("references", True)), ssl=ssl,
                          caveats=caveats)
    check_axes(spec)
    return spec


def prepare_offline_data(spec: ExperimentSpec) -> List[str]:
    """Write the ``prepare`` datasets that are missing (offline sources only)."""
    done = []
    for dataset, source in spec.prepare.items():
        ds = spec.config.get("datasets", {}).get(dataset)
        if ds is None:
            raise ConfigError(f"prepare: dataset '{dataset}' is not defined under datasets")
        prepare_dataset(source, str(Path(ds["path"]).resolve()))
        done.append(dataset)
    return done
