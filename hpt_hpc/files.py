"""Every file the toolkit writes whole goes through here.

* :func:`atomic_write` / :func:`write_text_atomic`: the bytes go to a temporary file beside
  the target (``.<name>.<pid>.<random>.tmp``), which then replaces the target in one
  rename, so a reader sees the old file or the new one, never half of one. The temporary
  file is created the way ``open`` creates a file (mode ``0o666`` less the umask, the
  folder's default ACL applied), so checkpoints, exports, embeddings and records are as
  readable by colleagues in a shared folder as any other file the user creates.
* :func:`refuse_inputs`: an output that names one of the command's inputs is refused.
* :func:`link_atomic`: one file's bytes in several places (final/last checkpoints, a local
  MLflow store's checkpoint artifacts, an init cache) without extra copies.
"""
from __future__ import annotations

import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Mapping, Optional, Sequence

from .errors import HptError

TEMP_SUFFIX = ".tmp"  # every temporary file: ``.<name>.<pid>.<random>.tmp``
_NAME_KEPT = 120  # of the target's name in a temporary name (NAME_MAX is 255 bytes)


class OutputError(HptError, ValueError):
    """An output the command must not write (it names one of its inputs)."""


def temporary_beside(path: os.PathLike, kind: str = "") -> Path:
    """A new, unused name for a temporary file beside ``path`` (hidden, ends in ``.tmp``)."""
    path = Path(path)
    tag = f".{kind}" if kind else ""
    return path.with_name(f".{path.name[:_NAME_KEPT]}.{os.getpid()}.{secrets.token_hex(4)}"
                          f"{tag}{TEMP_SUFFIX}")


def _create(path: Path) -> "tuple[Path, int]":
    """Create a temporary file beside ``path`` as ``open(..., "w")`` would (umask applied)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = temporary_beside(path)
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 32 random bits taken
            continue


@contextmanager
def atomic_write(path: os.PathLike, mode: str = "wb", *, encoding: Optional[str] = None,
                 newline: Optional[str] = None, errors: Optional[str] = None,
                 durable: bool = False) -> Iterator[IO]:
    """Write ``path`` whole: yields a file object opened with ``mode`` (``"wb"`` or
    ``"w"``) on a new temporary file beside it; when the block ends without an error
    the file replaces ``path`` (its folder created first), otherwise it is removed and
    ``path`` stays as it was. ``durable``: the file and the rename are synced to disk
    first (checkpoints)."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes a new file (mode 'w' or 'wb'), not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, fd = _create(path)
    try:
        with os.fdopen(fd, mode, encoding=encoding, newline=newline, errors=errors) as handle:
            yield handle
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _sync_folder(path.parent)


def write_text_atomic(path: os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """``path`` holds ``text`` (see :func:`atomic_write`); returns ``path``."""
    with atomic_write(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def _sync_folder(folder: Path) -> None:
    """Persist a rename in ``folder`` (not supported on every platform/filesystem)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def refuse_inputs(outputs: Sequence[os.PathLike], inputs: Mapping[str, os.PathLike]) -> None:
    """Raise :class:`OutputError` when an output names the same file as one of ``inputs``
    (``{what it is: path}``; symbolic and hard links count: the same inode)."""
    for output in outputs:
        if not os.path.exists(output):
            continue
        for what, given in inputs.items():
            if given and os.path.exists(given) and os.path.samefile(output, given):
                raise OutputError(f"{output} is {what}; an output never replaces an input: "
                                  f"choose another output name")


def link_atomic(source: os.PathLike, target: os.PathLike) -> bool:
    """Make ``target`` the same file as ``source`` (a hard link, atomically replacing any
    existing ``target``); copy where the filesystem has no hard links (another device,
    some network filesystems). Returns True for a link, False for a copy."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(target, "link")
    try:
        try:
            os.link(source, tmp)
            linked = True
        except OSError:
            shutil.copy2(source, tmp)
            linked = False
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return linked
