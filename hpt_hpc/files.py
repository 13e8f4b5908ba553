"""File operations shared across layers: a hard link that replaces its target atomically,
so one file's bytes can stand in several places (final/last checkpoints, a local MLflow
store's checkpoint artifacts, an init cache) without extra copies."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


def link_atomic(source: os.PathLike, target: os.PathLike) -> bool:
    """Make ``target`` the same file as ``source`` (a hard link, atomically replacing any
    existing ``target``); copy where the filesystem has no hard links (another device,
    some network filesystems). Returns True for a link, False for a copy."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        linked = True
    except OSError:
        shutil.copy2(source, tmp)
        linked = False
    os.replace(tmp, target)
    return linked
