"""YAML -> typed config, strictly: unknown keys and wrong types fail with the key's path
and the nearest valid key; ``--set a.b=c`` overrides are applied before validation."""
from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import re
import typing
from pathlib import Path
from typing import Any, Dict, Iterable, List, Union

from ..errors import ConfigError
from ..tracking.filters import filter_value
from ..tracking.store import TrackingError, normalize_uri
from .refs import InitRef
from .schema import ARCHS, STAGE_NAMES, TIMM_PREFIX, ExperimentConfig
from .yamlfile import parse_yaml, read_yaml_file

_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # what YAML 1.1 misses


def suggest(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if tp is InitRef:  # parsed once, here; its text is what config_to_dict gives back
        if isinstance(value, InitRef):
            return value
        if value is not None and (not isinstance(value, str) or isinstance(value, bool)):
            raise ConfigError(f"{where}: expected a reference (a string) or null, got "
                              f"{value!r}")
        return InitRef.parse(value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


_YAML_BOOL_WORDS = {False: ("off", "no", "false"), True: ("on", "yes", "true")}


def _choice_word(value: Any, choices: tuple) -> Any:
    """YAML 1.1 reads ``off``/``on``/``yes``/``no`` as booleans: back to the one value of a
    closed set spelled so (``compute.fused_optimizer: off``); anything else unchanged."""
    if isinstance(value, bool):
        words = [c for c in choices if c in _YAML_BOOL_WORDS[value]]
        if len(words) == 1:
            return words[0]
    return value


def _build(cls: type, data: Dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    for key in data:
        if key not in names:
            raise ConfigError(
                f"unknown config key '{where + '.' if where else ''}{key}'{suggest(key, names)}; "
                f"valid keys here: {', '.join(names)}")
    data = {k: _choice_word(v, fields[k].metadata.get("choices", ())) for k, v in data.items()}
    kwargs = {k: _coerce(v, hints[k], f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    return cls(**kwargs)


def apply_overrides(data: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """Apply ``dotted.key=value`` overrides (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.path=value")
        dotted, raw = item.split("=", 1)
        value = parse_yaml(raw, f"override '{item}'") if raw.strip() else None
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # 1e-3: a number, though YAML 1.1 reads it as a string
        node = data
        parts = dotted.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{dotted}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


# Numeric domains: path (``*``: every entry of a mapping) -> (low, high, low open, high
# open); ``None`` bounds are unbounded, ``None`` values (optional keys) are not checked.
RANGES = {
    "seed": (0, None, False, False), "progress_seconds": (0, None, False, False),
    "model.width": (0, None, True, False),
    "model.stem_stride": (1, None, False, False), "model.in_channels": (1, None, False, False),
    "moco.queue_size": (1, None, False, False), "moco.momentum": (0, 1, False, False),
    "moco.temperature": (0, None, True, False), "moco.dim": (1, None, False, False),
    "moco.mlp_hidden": (1, None, False, False), "moco.bn_splits": (1, None, False, False),
    "dino.out_dim": (1, None, False, False), "dino.hidden_dim": (1, None, False, False),
    "dino.bottleneck_dim": (1, None, False, False),
    "dino.freeze_last_layer_steps": (0, None, False, False),
    "dino.teacher_temp": (0, None, True, False), "dino.warmup_teacher_temp": (0, None, True, False),
    "dino.warmup_teacher_temp_steps": (0, None, False, False),
    "dino.student_temp": (0, None, True, False), "dino.center_momentum": (0, 1, False, False),
    "dino.momentum_teacher": (0, 1, False, False),
    "dino.collapse_min_feature_std": (0, None, False, False),
    "dino.collapse_min_kl": (0, None, False, False), "optim.clip_grad": (0, None, True, False),
    "optim.lr": (0, None, False, False), "optim.lr_batch_reference": (1, None, False, False),
    "optim.weight_decay": (0, None, False, False), "optim.weight_decay_end": (0, None, False, False),
    "optim.momentum": (0, 1, False, True),
    "optim.batch_size": (1, None, False, False), "optim.iterations": (1, None, False, False),
    "optim.warmup_iterations": (0, None, False, False),
    "augment.color_jitter.brightness": (0, None, False, False),
    "augment.color_jitter.contrast": (0, None, False, False),
    "augment.color_jitter.saturation": (0, None, False, False),
    "augment.color_jitter.hue": (0, 0.5, False, False),
    "augment.*.p": (0, 1, False, False), "augment.blur.kernel_size": (1, None, False, False),
    "augment.local_crops.number": (0, None, False, False),
    "augment.local_crops.size": (1, None, False, False),
    "data.image_size": (1, None, False, False), "data.channels": (1, None, False, False), "data.workers": (0, None, False, False),
    "data.max_pixels": (1, None, False, False), "data.shuffle_buffer": (1, None, False, False), "checkpoint.every": (0, None, False, False),
    "checkpoint.keep": (0, None, False, False), "checkpoint.at": (1, None, False, False),
    "probe.lr": (0, None, True, False), "probe.momentum": (0, 1, False, True),
    "probe.weight_decay": (0, None, False, False), "probe.iterations": (1, None, False, False),
    "probe.batch_size": (1, None, False, False), "probe.eval_every": (1, None, False, False),
    "probe.max_train_images": (1, None, False, False),
    "probe.labels_per_class": (1, None, False, False), "probe.repeats": (1, None, False, False),
    "probe.center_crop_ratio": (0, 1, True, False), "finetune.labels": (1, None, False, False),
    "probe.knn_k": (1, None, False, False), "probe.knn_temperature": (0, None, True, False),
    "finetune.lr": (0, None, True, False), "finetune.head_lr_mult": (0, None, True, False),
    "finetune.momentum": (0, 1, False, True), "finetune.weight_decay": (0, None, False, False),
    "finetune.iterations": (1, None, False, False), "finetune.batch_size": (1, None, False, False),
    "finetune.eval_every": (1, None, False, False), "compute.accumulate": (1, None, False, False),
    "compute.threads": (1, None, False, False),
    "tracking.flush_seconds": (0, None, True, False),
    "stages.*.iterations": (1, None, False, False), "stages.*.lr": (0, None, False, False),
    "stages.*.batch_size": (1, None, False, False), "stages.*.blocks": (0, None, False, False),
    "stages.*.lora.rank": (1, None, False, False), "stages.*.lora.alpha": (0, None, True, False),
    "datasets.*.max_images": (1, None, False, False),
}
NEEDS_INIT = ("bn", "bn-stats", "last-blocks", "lora")  # variants that freeze weights
COLOUR_CHANNELS = (1, 3)  # data.channels of grey/RGB images; others are band stacks
# settings a resumed stage may change (checkpoint.resume_changes): the learning rate
RESUME_CHANGES = ("optim.lr", *(f"stages.{name}.lr" for name in STAGE_NAMES))


def _values(data: Any, parts: List[str], where: str):
    """``(dotted path, value)`` of every key a RANGES path names."""
    if not parts:  # a list's items each (checkpoint.at)
        yield from ((f"{where}[{i}]", v) for i, v in enumerate(data)) \
            if isinstance(data, list) else [(where, data)]
        return
    head, rest = parts[0], parts[1:]
    items = (data.items() if isinstance(data, dict) else vars(data).items()) if head == "*" \
        else [(head, data.get(head) if isinstance(data, dict) else getattr(data, head, None))]
    for key, value in items:
        if value is not None:
            yield from _values(value, rest, f"{where}.{key}" if where else key)


def check_ranges(cfg: ExperimentConfig) -> None:
    """Every numeric key inside its domain (:data:`RANGES`), one clear error otherwise."""
    for path, (low, high, low_open, high_open) in RANGES.items():
        for where, value in _values(cfg, path.split("."), ""):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            bad_low = low is not None and (value <= low if low_open else value < low)
            bad_high = high is not None and (value >= high if high_open else value > high)
            if bad_low or bad_high:
                raise ConfigError(f"{where}: {value!r} is outside its range "
                                  f"{range_text(RANGES[path])}")
    check_bands(cfg)
    check_local_crops(cfg)


def range_text(bounds: tuple) -> str:
    """A :data:`RANGES` entry as an interval: ``[1, inf]``, ``(0, 1]``."""
    low, high, low_open, high_open = bounds
    return (f"{'(' if low_open else '['}{low if low is not None else '-inf'}, "
            f"{high if high is not None else 'inf'}{')' if high_open else ']'}")


def _check_choices(section: Any, where: str) -> None:
    """Every key declared with ``choices`` in the schema holds one of them (sections and
    mappings of sections are walked)."""
    for f in dataclasses.fields(section):
        value, path = getattr(section, f.name), f"{where}.{f.name}" if where else f.name
        if dataclasses.is_dataclass(value):
            _check_choices(value, path)
        elif isinstance(value, dict):
            for name, item in value.items():
                if dataclasses.is_dataclass(item):
                    _check_choices(item, f"{path}.{name}")
        elif f.metadata.get("choices") and value is not None and \
                value not in f.metadata["choices"]:
            _check_choice(path, value, f.metadata["choices"])


def check_bands(cfg: ExperimentConfig) -> None:
    """``data.channels`` other than 1 (grey) or 3 (RGB) means multi-band images: read by
    the torchvision backend only, without the colour augmentations."""
    bands = cfg.data.channels
    if bands in COLOUR_CHANNELS:
        return
    if cfg.data.backend != "torchvision":
        raise ConfigError(f"data.channels: {bands} bands need data.backend torchvision "
                          f"(DALI decodes grey or RGB images only)")
    on = [name for name in ("color_jitter", "grayscale")
          if getattr(cfg.augment, name).enabled and getattr(cfg.augment, name).p > 0]
    if on:
        raise ConfigError(f"data.channels: {bands} bands: "
                          + ", ".join(f"augment.{n}" for n in on)
                          + " need grey or RGB images; switch "
                          + ("them" if len(on) > 1 else "it") + " off ("
                          + " ".join(f"--set augment.{n}.enabled=false" for n in on) + ")")


def check_local_crops(cfg: ExperimentConfig) -> None:
    """``augment.local_crops``: a side no larger than the global views', an area range
    ``0 < low <= high <= 1``."""
    local = cfg.augment.local_crops
    if local.size is not None and local.size > cfg.data.image_size:
        raise ConfigError(f"augment.local_crops.size: {local.size} is larger than "
                          f"data.image_size {cfg.data.image_size} (local views are the "
                          f"small ones)")
    scale = list(local.scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ConfigError(f"augment.local_crops.scale: {scale} must be [low, high] with "
                          f"0 < low <= high <= 1 (fractions of the image area)")


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Cross-field checks that types alone cannot express."""
    check_ranges(cfg)
    _check_choices(cfg, "")
    arch = cfg.model.arch
    if arch not in ARCHS and not (arch.startswith(TIMM_PREFIX) and arch[len(TIMM_PREFIX):]):
        raise ConfigError(f"model.arch: '{arch}' is neither a built-in ResNet "
                          f"({', '.join(ARCHS)}){suggest(arch, ARCHS)} nor timm:<name>")
    if cfg.model.timm_kwargs and not arch.startswith(TIMM_PREFIX):
        raise ConfigError("model.timm_kwargs: only timm models (model.arch: timm:<name>) "
                          "take them")
    if cfg.model.in_channels != cfg.data.channels:
        raise ConfigError(f"model.in_channels ({cfg.model.in_channels}) must equal "
                          f"data.channels ({cfg.data.channels})")
    if len(cfg.data.mean) != cfg.data.channels or len(cfg.data.std) != cfg.data.channels:
        raise ConfigError(f"data.mean and data.std need {cfg.data.channels} values "
                          f"(one per channel)")
    for setting in cfg.checkpoint.resume_changes:
        if setting not in RESUME_CHANGES:
            raise ConfigError(f"checkpoint.resume_changes: '{setting}' cannot differ from a "
                              f"resume checkpoint's; allowed: {', '.join(RESUME_CHANGES)}")
    for name, stage in cfg.stages.items():
        where = f"stages.{name}"
        if name not in STAGE_NAMES:
            raise ConfigError(f"{where}: stage names are {', '.join(STAGE_NAMES)}"
                              f"{suggest(name, STAGE_NAMES)}")
        if stage.dataset not in cfg.datasets:
            raise ConfigError(f"{where}.dataset: '{stage.dataset}' is not defined under "
                              f"datasets{suggest(stage.dataset, cfg.datasets)}")
        ref = stage.init
        if ref.kind == "stage" and (ref.value not in cfg.stages or ref.value == name):
            raise ConfigError(f"{where}.init: '{ref}' names no other stage")
        if stage.variant in NEEDS_INIT and ref.is_random:
            raise ConfigError(f"{where}: variant '{stage.variant}' needs an init checkpoint")
    for key, check, value in (("tracking.uri", normalize_uri, cfg.tracking.uri),
                              ("name", filter_value, cfg.tracking.enabled and cfg.name)):
        try:
            if value:
                check(value)  # the name: runs are searched for by it
        except TrackingError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    return cfg


def _check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of {', '.join(choices)}"
                          f"{suggest(value, choices)}")


def config_from_dict(data: Dict[str, Any], overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Build and validate a config from a raw dict plus ``key=value`` overrides (``data``
    is not modified)."""
    data = apply_overrides(copy.deepcopy(dict(data or {})), overrides)
    if "sweep" in data:
        raise ConfigError("config key 'sweep' is now 'grid' (the launch grid of "
                          "`hpt-hpc launch`; `hpt-hpc sweep` runs experiment files)")
    return validate(_build(ExperimentConfig, data, ""))


def read_config_dict(path: Union[str, Path], kind: str = "config") -> Dict[str, Any]:
    """The raw mapping of a YAML ``kind`` file (config, experiment file), read once and
    validated by the caller."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{kind} file '{path}' does not exist")
    data = read_yaml_file(path, kind) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} file '{path}' must hold a mapping at the top level")
    return data


def load_config(path: Union[str, Path], overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file (see ``configs/``) into a validated config."""
    return config_from_dict(read_config_dict(path), overrides)


def config_to_dict(cfg: Any) -> Dict[str, Any]:
    """Plain nested dict of a config (for checkpoints, YAML dumps and MLflow params); a
    reference as its text (``None``: random)."""
    return _plain(cfg)


def _plain(value: Any) -> Any:
    if isinstance(value, InitRef):
        return value.text
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return copy.deepcopy(value)


def config_digest(config: Dict[str, Any]) -> str:
    """A short sha256 of a plain config dict (canonical JSON): equal digests, equal
    settings (an export file names the config its weights were trained with)."""
    text = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def flatten(data: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{'a': {'b': 1}} -> {'a.b': 1}`` (for MLflow parameters)."""
    out: Dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def stage_settings(cfg: ExperimentConfig, stage: str, world_size: int = 1,
                   ) -> Dict[str, Any]:
    """Effective iterations, global and per-rank batch, and learning rate of a stage.

    The rate follows the linear scaling rule documented on :class:`OptimConfig`.
    """
    st = cfg.stages[stage]
    batch = st.batch_size if st.batch_size is not None else cfg.optim.batch_size
    if batch % world_size:
        raise ConfigError(f"stages.{stage}: global batch {batch} does not split evenly over "
                          f"{world_size} ranks; use a multiple of {world_size}")
    base_lr = st.lr if st.lr is not None else cfg.optim.lr
    reference = cfg.optim.lr_batch_reference or batch
    return {
        "iterations": st.iterations if st.iterations is not None else cfg.optim.iterations,
        "lr": base_lr * batch / reference,
        "batch_size": batch,
        "rank_batch_size": batch // world_size,
    }
