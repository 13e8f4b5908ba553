"""Resolving a checkpoint reference (:class:`~hpt_hpc.config.refs.InitRef`) to a local
file: the I/O half of a reference (the config layer parses, this layer reads, downloads
and links). Registry and run references are downloaded once into the stage's (or
evaluation's) ``init-cache/`` from the tracking store; public weights are read from the
model cache (:mod:`hpt_hpc.hub`), never downloaded; files and ``stage:`` references must
exist.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from ..config.layout import StageLayout
from ..config.refs import InitRef, InitRefError
from ..tracking.registry import fetch_checkpoint


@dataclass(frozen=True)
class Resolved:
    """A reference resolved to a local checkpoint file (``None``: random init)."""

    path: Optional[str]
    tags: Dict[str, str]
    arch: str = ""  # the model public weights are for (timm's/torchvision's name)
    name: str = ""  # the reference, public names completed (timm's default tag)


def resolve(ref: InitRef, layout: Optional[StageLayout], tracking_uri: Optional[str],
            who: str = "stage") -> Resolved:
    """The local checkpoint file of ``ref`` plus lineage tags (one line naming what to do
    when it cannot be had)."""
    if ref.is_random:
        return Resolved(None, {})
    tags = ref.tags()
    if ref.is_public:
        found = ref.public(who)
        tags["hpt.init_weights"] = found.source.ref
        if found.revision:
            tags["hpt.init_revision"] = found.revision
        return Resolved(str(found.path), tags, found.arch, found.source.ref)
    if ref.in_registry:
        if not tracking_uri:
            raise InitRefError(f"{who}: '{ref}' needs MLflow tracking (it is switched "
                               f"off); use a checkpoint file instead")
        if layout is None:
            raise InitRefError(f"'{ref}' needs an output_dir to cache the download in")
        parts = {"model": ref.model_parts} if ref.kind == "model" else {"run": ref.run_parts}
        fetched = fetch_checkpoint(str(ref), tracking_uri, layout.init_cache,
                                   run_of=InitRef.run_parts_of, **parts)
        tags["hpt.init_run_id"] = fetched.run_id
        if fetched.model:
            tags.update({"hpt.init_model": fetched.model,
                         "hpt.init_model_version": fetched.version})
        return Resolved(fetched.path, tags, name=str(ref))
    path = ref.local_path(layout)
    if not path.is_file():
        if ref.kind == "stage":
            raise InitRefError(f"{who} starts from stage '{ref.value}', but "
                               f"'{ref.value}' has no final checkpoint at {path}; run "
                               f"stage '{ref.value}' first")
        raise InitRefError(f"{who}: init checkpoint '{ref.value}' does not exist")
    return Resolved(str(path), tags, name=str(path) if ref.kind == "file" else str(ref))
