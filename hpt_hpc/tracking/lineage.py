"""Checkpoint lineage through the MLflow model registry.

Each stage's final checkpoint becomes a version of one registered model per experiment
(``tracking.model_name``, default: the experiment name) and the alias
``<pipeline>-<stage>`` points at it. A later stage starts from ``models:/<name>@<alias>``,
``models:/<name>/<version>``, ``runs:/<run_id>/<path>`` or a file; the first two are
downloaded once into ``<stage_dir>/init-cache/`` and loaded as a file.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from ..errors import HptError

log = logging.getLogger(__name__)

INIT_SCHEMES = ("models:/", "runs:/")


class InitNotFound(HptError):
    """An init URI names a model, alias, version, run or artifact that does not exist."""


def safe_name(text: str) -> str:
    """Letters, digits, ``_``, ``-`` and ``.`` only (registry names, aliases, folders)."""
    return re.sub(r"[^\w.\-]+", "-", str(text)).strip("-") or "x"


def alias_for(pipeline: str, label: str) -> str:
    """Registry alias of a stage's final checkpoint: ``<pipeline>-<label>``."""
    alias = re.sub(r"[^\w\-]+", "-", f"{pipeline}-{label}").strip("-")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        alias = f"a-{alias}"  # reserved by MLflow
    return alias


def model_name_for(cfg: Any) -> str:
    """Registered model of a config: ``tracking.model_name`` or the experiment name."""
    return safe_name(cfg.tracking.model_name or cfg.tracking.experiment or cfg.name)


def stage_model_uri(cfg: Any, pipeline: str, stage: str) -> str:
    """``models:/<name>@<pipeline>-<stage>``: what ``launch --chain`` passes as ``init``."""
    return f"models:/{model_name_for(cfg)}@{alias_for(pipeline, stage)}"


def ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException
    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        try:
            client.create_registered_model(
                name, description="hpt-hpc MoCo-v2 stage checkpoints (aliases: "
                                  "<pipeline>-<stage>)")
        except MlflowException as again:
            if again.error_code != "RESOURCE_ALREADY_EXISTS":  # a concurrent task made it
                raise


def _model_version(client: Any, uri: str, where: str) -> Any:
    """The model version a ``models:/name@alias`` or ``models:/name/version`` URI names."""
    from mlflow.exceptions import MlflowException
    ref = uri[len("models:/"):]
    name, alias, version = ref, None, None
    if "@" in ref:
        name, alias = ref.split("@", 1)
    elif "/" in ref:
        name, version = ref.rsplit("/", 1)
    else:
        raise HptError(f"init '{uri}': use models:/<name>@<alias> or models:/<name>/<version>")
    try:
        return (client.get_model_version_by_alias(name, alias) if alias
                else client.get_model_version(name, version))
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
    try:
        model = client.get_registered_model(name)
    except MlflowException:
        known = [m.name for m in client.search_registered_models(max_results=20)]
        raise InitNotFound(f"init '{uri}': there is no registered model '{name}' in "
                           f"{where} (registered models: "
                           f"{', '.join(known) or 'none'})") from None
    aliases = getattr(model, "aliases", {}) or {}
    listing = ", ".join(f"{a} (v{v})" for a, v in sorted(aliases.items())) or "none"
    what = f"alias '{alias}'" if alias else f"version {version}"
    raise InitNotFound(f"init '{uri}': registered model '{name}' has no {what}; its "
                       f"aliases: {listing}") from None


def fetch_init(uri: str, tracking_uri: str, cache_dir: Path) -> Tuple[str, Dict[str, str]]:
    """Download a ``models:/`` or ``runs:/`` init into ``cache_dir`` (once); return the
    local checkpoint file and the lineage tags the stage records."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from .runs import client_for
    client = client_for(tracking_uri)
    tags = {"hpt.init_source": uri}
    if uri.startswith("models:/"):
        mv = _model_version(client, uri, tracking_uri)
        source = mv.source
        tags.update({"hpt.init_model": mv.name, "hpt.init_model_version": str(mv.version),
                     "hpt.init_run_id": mv.run_id or ""})
        key = f"{safe_name(mv.name)}-v{mv.version}"
    else:
        source = uri
        run_id = uri[len("runs:/"):].split("/", 1)[0]
        tags["hpt.init_run_id"] = run_id
        key = safe_name(uri[len("runs:/"):].replace("/", "_"))
    dest = Path(cache_dir) / key
    cached = _single_checkpoint(dest) if dest.is_dir() else None
    if cached is None:
        dest.mkdir(parents=True, exist_ok=True)
        try:
            download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=tracking_uri)
        except (MlflowException, OSError) as exc:
            raise InitNotFound(f"init '{uri}': cannot download {source}: {exc}") from None
        cached = _single_checkpoint(dest)
        if cached is None:
            raise InitNotFound(f"init '{uri}': {source} holds no single checkpoint file")
        log.info("init %s -> %s", uri, cached)
    return str(cached), tags


def _single_checkpoint(folder: Path) -> Optional[Path]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return files[0] if len(files) == 1 else None


def checkpoint_run_id(path: str) -> Optional[str]:
    """The ``tracker_run_id`` a toolkit checkpoint holds (memory-mapped: tensors not read)."""
    import torch
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip file, or a foreign layout: no lineage to record
        return None
    return (state.get("tracker_run_id") or None) if isinstance(state, dict) else None


def checkpoint_lineage(path: str) -> Dict[str, str]:
    """Tags naming the run that wrote a toolkit checkpoint (none for foreign files)."""
    run_id = checkpoint_run_id(path)
    return {"hpt.init_run_id": run_id} if run_id else {}
