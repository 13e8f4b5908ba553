"""Scheduler options: cluster profiles (``slurm/profiles/*.yaml``) overlaid by CLI flags."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..config.yamlfile import read_yaml_file
from ..errors import HptError
from ..hub import CACHE_ENV

PROFILE_DIR_ENV = "HPT_SLURM_PROFILES"


@dataclass
class SchedulerOptions:
    """What a cluster user sets for a job. ``gpus_per_node > 0`` makes one task per GPU;
    on CPU nodes ``tasks_per_node`` sets the number of DDP ranks per node."""

    executor: str = "auto"  # auto | slurm | local | debug
    partition: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 2
    mem: Optional[str] = None  # e.g. 16G, 4000M
    time: str = "60"  # minutes, or [D-]HH:MM[:SS]
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    array_parallelism: int = 64
    signal_delay_s: int = 120  # SIGUSR2 this long before the time limit: checkpoint, requeue
    max_num_timeout: int = 30  # requeues after hitting the time limit (submitit's: 3)
    extra: Dict[str, Any] = field(default_factory=dict)  # more sbatch options
    container: Optional[str] = None  # Apptainer/Singularity image every task runs in
    container_binds: List[str] = field(default_factory=list)  # more SRC[:DST[:ro]] binds
    container_runtime: Optional[str] = None  # apptainer | singularity | a path (default: found)
    model_cache: Optional[str] = None  # cache root of public weights (hpt-hpc models fetch)

    @property
    def ranks_per_node(self) -> int:
        return self.gpus_per_node if self.gpus_per_node > 0 else self.tasks_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.ranks_per_node


def parse_minutes(value: str) -> int:
    """``90`` -> 90; ``01:30:00`` -> 90; ``1-00:00:00`` -> 1440 (SLURM time formats)."""
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text)
    match = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?", text)
    if not match:
        raise HptError(f"--time '{value}': use minutes or [D-]HH:MM[:SS]")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return days * 1440 + hours * 60 + minutes + (1 if seconds else 0)


def profile_dirs() -> list:
    """Where profiles are looked up: $HPT_SLURM_PROFILES, ./slurm/profiles, the package's."""
    dirs = [Path(p) for p in os.environ.get(PROFILE_DIR_ENV, "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "slurm" / "profiles")
    dirs.append(Path(__file__).resolve().parents[2] / "slurm" / "profiles")
    return list(dict.fromkeys(d.resolve() for d in dirs))


def load_profile(name: Optional[str]) -> Dict[str, Any]:
    """A profile's options (``{}`` for none); unknown names and keys are errors."""
    if not name:
        return {}
    if not re.fullmatch(r"[\w][\w.-]*", name) or ".." in name:
        raise HptError(f"--profile '{name}': a profile is a name (letters, digits, '_', '-', "
                       f"'.'), looked up in {', '.join(str(d) for d in profile_dirs())}")
    candidates = [d / f"{name}.yaml" for d in profile_dirs()]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        known = sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.yaml")})
        raise HptError(f"unknown cluster profile '{name}'; known: {', '.join(known) or 'none'}"
                       f" (searched {', '.join(str(d) for d in profile_dirs())})")
    data = read_yaml_file(path, "profile") or {}
    if not isinstance(data, dict):
        raise HptError(f"profile {path}: expected a mapping of options at the top level")
    valid = {f.name for f in dataclasses.fields(SchedulerOptions)}
    unknown = set(data) - valid
    if unknown:
        raise HptError(f"profile {path}: unknown keys {sorted(unknown)}; valid: {sorted(valid)}")
    return data


def build_options(profile: Optional[str], **flags: Any) -> SchedulerOptions:
    """Profile values, then every CLI flag that was given (not ``None``)."""
    values = load_profile(profile)
    extra = dict(values.pop("extra", {}) or {})
    extra.update(flags.pop("extra", None) or {})
    binds = list(values.pop("container_binds", None) or [])  # profile's, then the flags'
    binds += list(flags.pop("container_binds", None) or [])
    values.update({k: v for k, v in flags.items() if v is not None})
    options = SchedulerOptions(**values, extra=extra, container_binds=binds)
    parse_minutes(options.time)
    return options


def executor_parameters(options: SchedulerOptions, name: str) -> Dict[str, Any]:
    """submitit ``update_parameters`` keywords for these options."""
    params: Dict[str, Any] = {
        "name": name,
        "nodes": options.nodes,
        "tasks_per_node": options.ranks_per_node,
        "cpus_per_task": options.cpus_per_task,
        "timeout_min": parse_minutes(options.time),
        "slurm_array_parallelism": options.array_parallelism,
        "slurm_signal_delay_s": options.signal_delay_s,
    }
    if options.gpus_per_node:
        params["gpus_per_node"] = options.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "mem"):
        value = getattr(options, key)
        if value:
            params[f"slurm_{key}"] = value
    if options.extra:
        params["slurm_additional_parameters"] = dict(options.extra)
    if options.model_cache:
        params["slurm_setup"] = job_setup(options)
    return params


def job_setup(options: SchedulerOptions) -> List[str]:
    """Shell lines every job runs first: the model cache its inits are read from."""
    if not options.model_cache:
        return []
    root = Path(options.model_cache).expanduser().resolve()
    return [f"export {CACHE_ENV}={shlex.quote(str(root))}"]
