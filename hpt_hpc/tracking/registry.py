"""The MLflow model registry: registered models, aliases, and downloading a registered
version's or a run's checkpoint once into a cache folder. Plain values only: the
references themselves (``models:/``, ``runs:/``) are parsed and built by
:class:`hpt_hpc.config.refs.InitRef`, which hands over their parts.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Tuple

from ..errors import HptError
from ..files import link_atomic
from .store import local_artifacts, reader_for

log = logging.getLogger(__name__)


class InitNotFound(HptError):
    """A URI names a model, alias, version, run or artifact that does not exist."""


@dataclass(frozen=True)
class Fetched:
    """A downloaded checkpoint: the local file and where it came from."""

    path: str
    run_id: str = ""
    model: str = ""
    version: str = ""


def safe_name(text: str) -> str:
    """Letters, digits, ``_``, ``-`` and ``.`` only (registry names, aliases, folders)."""
    return re.sub(r"[^\w.\-]+", "-", str(text)).strip("-") or "x"


def alias_for(pipeline: str, label: str) -> str:
    """Registry alias of a stage's final checkpoint: ``<pipeline>-<label>``."""
    alias = re.sub(r"[^\w\-]+", "-", f"{pipeline}-{label}").strip("-")
    if alias.lower() == "latest" or re.fullmatch(r"[vV]\d+", alias):
        alias = f"a-{alias}"  # reserved by MLflow
    return alias


def version_source(run_id: str, path: str) -> str:
    """MLflow's URI of a run's artifact, the source a model version records. The tracking
    layer sits below :class:`~hpt_hpc.config.refs.InitRef` and cannot ask it; a test
    (tests/test_refs_owner.py) pins that InitRef reads this form back as that run and path."""
    return f"runs:/{run_id}/{path}"


def registered_uri(name: str, alias: str) -> str:
    """MLflow's URI of a registered alias, as a stage reports its final checkpoint (the
    same test pins it to :meth:`InitRef.registered`)."""
    return f"models:/{name}@{alias}"


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


def _model_version(client: Any, name: str, alias: Optional[str], version: Optional[str],
                   uri: str, where: str) -> Any:
    """The model version ``alias`` or ``version`` of the registered model ``name``
    (``uri``: the reference, for messages)."""
    from mlflow.exceptions import MlflowException
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


def _inside(root: Path, rel: str, uri: str) -> Path:
    """``root/rel`` with links resolved, refused when it leaves ``root``."""
    real_root, target = root.resolve(), (root / rel).resolve()
    if not target.is_relative_to(real_root):
        raise InitNotFound(f"'{uri}': the artifact must stay inside the run's artifacts "
                           f"({root}); it leads to {target}")
    return target


RunParts = Tuple[str, str]  # (run id, artifact path inside the run)


def fetch_checkpoint(uri: str, tracking_uri: str, cache_dir: Path, *,
                     model: Optional[Tuple[str, Optional[str], Optional[str]]] = None,
                     run: Optional[RunParts] = None,
                     run_of: Callable[[str], Optional[RunParts]] = lambda source: None
                     ) -> Fetched:
    """Download the checkpoint of a registered version (``model``: name, alias, version)
    or of a run (``run``) into ``cache_dir`` (once); ``uri``: the reference, for messages;
    ``run_of``: a version's source as run parts (None: downloaded as it is)."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    client = reader_for(tracking_uri, hint=f"init '{uri}' can only come from the "
                                                f"store that registered it")
    if model is not None:
        mv = _model_version(client, *model, uri, tracking_uri)
        source, key = mv.source, f"{safe_name(mv.name)}-v{mv.version}"
        fetched = dict(run_id=mv.run_id or "", model=mv.name, version=str(mv.version))
        parts = run_of(source)  # a registered version's source is checked as well
    else:
        parts = run
        source, key = uri, safe_name(f"{run[0]}_{run[1].replace('/', '_')}")
        fetched = dict(run_id=run[0])
    dest = Path(cache_dir) / key
    cached = _single_checkpoint(dest) if dest.is_dir() else None
    if cached is None and parts is not None:  # a local store: link, no copy
        run_id, rel = parts
        local = local_artifacts(client, run_id)
        target = _inside(local, rel, uri) if local is not None else None
        if target is not None and target.is_file():
            cached = dest / Path(rel).name
            link_atomic(target, cached)
            log.info("init %s -> %s (linked)", uri, cached)
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
    return Fetched(str(cached), **fetched)


def _single_checkpoint(folder: Path) -> Optional[Path]:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return files[0] if len(files) == 1 else None
