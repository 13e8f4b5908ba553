"""Run every task of a job inside an Apptainer/Singularity image.

submitit starts each task as ``<python> -u -m <its task module> <folder>``; with a
container that ``<python>`` becomes ``apptainer exec [--nv] --bind ... IMAGE python3``.
The job's environment (``SLURM_*`` ranks, ``MLFLOW_TRACKING_URI``, ...) reaches the task
because Apptainer passes the host environment through unless told to clean it; the
master address and port are derived from it inside the task. The data, output, submitit
and MLflow store folders are bound at the same paths, so every path in the config means
the same inside the image.
"""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

from ..errors import HptError
from ..tracking.store import sqlite_path

RUNTIMES = ("apptainer", "singularity")
IMAGE_PYTHON = "python3"  # resolved on the image's PATH
CLEANENV_VARS = ("APPTAINER_CLEANENV", "SINGULARITY_CLEANENV")


def find_runtime(preferred: Optional[str] = None) -> str:
    """The runtime's path: ``preferred`` (a name or path), else ``apptainer``, else
    ``singularity`` (clusters that still ship the latter)."""
    names = [preferred] if preferred else list(RUNTIMES)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    wanted = preferred or " or ".join(RUNTIMES)
    raise HptError(f"--container needs {wanted} on PATH, and none was found; load it "
                   f"first (e.g. `module load apptainer`) or drop --container")


def check_image(image: str) -> Path:
    """The image as an absolute path: a ``.sif`` file or a sandbox folder that exists."""
    if "://" in image:
        raise HptError(f"--container '{image}': give a local image file (.sif); pull it "
                       f"first with `apptainer pull img.sif {image}` (jobs never download)")
    path = Path(image).expanduser().resolve()
    if not path.exists():
        raise HptError(f"container image '{image}' does not exist; build it with "
                       f"`bash containers/build.sh` or copy it to shared storage first")
    if path.is_file() and not os.access(path, os.R_OK):
        raise HptError(f"container image '{path}' is not readable")
    return path


def parse_bind(spec: str) -> str:
    """A user bind ``SRC[:DST[:ro|rw]]`` with an absolute, existing SRC."""
    src, *rest = spec.split(":")
    if not src or len(rest) > 2:
        raise HptError(f"--container-bind '{spec}': use SRC[:DST[:ro|rw]]")
    path = Path(src).expanduser().resolve()
    if not path.exists():
        raise HptError(f"--container-bind '{spec}': {path} does not exist")
    return ":".join([str(path), *rest])


def folder_before_placeholders(folder: Path) -> Path:
    """submitit's folder up to its first ``%j``-style part (that part is made per job)."""
    parts = []
    for part in Path(folder).resolve().parts:
        if "%" in part:
            break
        parts.append(part)
    return Path(*parts)


def plan_paths(plans: Iterable, tracking_uri: Optional[str] = None) -> List[Path]:
    """Host paths the jobs of these plans read or write: datasets, output folders, init
    and evaluated checkpoint files that exist (the others are written by earlier phases
    into bound output folders), and the folder of an sqlite MLflow store."""
    paths: List[Path] = []
    for plan in plans:
        cfg = plan.config
        paths += [Path(d.path) for d in cfg.datasets.values() if d.path]
        paths.append(Path(cfg.output_dir))
        ref = plan.init if plan.kind == "stage" else getattr(plan, "checkpoint", None)
        paths += [p for p in ref.host_paths() if p.exists()] if ref is not None else []
        if plan.kind == "embed":  # its files go where --out says (the folder it exists in)
            folder = Path(plan.out).resolve().parent
            paths.append(next(p for p in (folder, *folder.parents) if p.exists()))
    db = sqlite_path(tracking_uri or "")
    if db is not None:
        paths.append(db.parent)
    return list(dict.fromkeys(paths))


def bind_specs(binds: Iterable) -> List[str]:
    """``--bind`` entries: a plain path binds at the same place (the outermost of nested
    ones is enough); ``SRC:DST[:opts]`` is kept as given. Every SRC must exist."""
    specs = [parse_bind(str(b)) for b in binds]
    same_place = sorted({Path(s) for s in specs if ":" not in s},
                        key=lambda p: (len(p.parts), str(p)))
    kept: List[Path] = []
    for path in same_place:
        if path != Path("/") and not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    mapped = [s for s in dict.fromkeys(specs) if ":" in s]
    return [str(p) for p in kept] + mapped


def exec_command(runtime: str, image: Path, binds: Sequence[str], gpus: bool,
                 python: str = IMAGE_PYTHON) -> List[str]:
    """``RUNTIME exec [--nv] [--bind A,B] IMAGE python3`` as an argument list."""
    cmd = [runtime, "exec"]
    if gpus:
        cmd.append("--nv")
    if binds:
        cmd += ["--bind", ",".join(binds)]
    return cmd + [str(image), python]


def check_environment() -> None:
    """The job's ranks only reach the task when the runtime keeps the environment."""
    for var in CLEANENV_VARS:
        if os.environ.get(var, "").lower() in ("1", "true", "yes"):
            raise HptError(f"{var} is set: the container would not see the job's ranks "
                           f"(SLURM_*) or MLflow settings; unset it for hpt-hpc launch")


def preflight(options, in_process: bool = False) -> tuple:
    """Fail before submission: executor (not one that runs jobs in this process),
    environment, runtime and image."""
    if in_process:
        raise HptError("--container runs tasks as separate processes: use --executor "
                       "slurm or local, not debug")
    check_environment()
    return find_runtime(options.container_runtime), check_image(options.container)


def task_python(options, kind: str, folder: Path) -> str:
    """The shell command submitit runs in place of ``python`` for every task."""
    runtime, image = preflight(options)
    logs = folder_before_placeholders(folder)
    logs.mkdir(parents=True, exist_ok=True)
    binds = bind_specs([logs, *options.container_binds])
    return shlex.join(exec_command(runtime, image, binds, gpus=options.gpus_per_node > 0))
