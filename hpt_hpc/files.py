"""Every file the toolkit writes whole goes through here.

* :func:`output_file`: the checks before a command writes a file it was given: not a
  folder, not one of the command's inputs (:func:`refuse_inputs`).
* :func:`make_folder`: an output's folder created, or one line why not.
* :func:`atomic_write` / :func:`write_text_atomic`: the bytes go to a temporary file beside
  the target (``.<name>.<pid>@<host>.<random>.tmp``), which then replaces the target in one
  rename, so a reader sees the old file or the new one, never half of one. The temporary
  file is created the way ``open`` creates a file (mode ``0o666`` less the umask, the
  folder's default ACL applied), so checkpoints, exports, embeddings and records are as
  readable by colleagues in a shared folder as any other file the user creates. The
  temporaries of the same target that an ended process of this machine left (killed,
  out of disk) are removed first (:func:`remove_stale_temporaries`).
* :func:`writing`: a read-only file system, a full disk, an exceeded quota or a refused
  permission while writing is one line naming the file (:class:`WriteFailure`: an
  :class:`OutputError` that is still an ``OSError``).
* :func:`refuse_inputs`: an output that names one of the command's inputs is refused.
* :func:`link_atomic`: one file's bytes in several places (final/last checkpoints, a local
  MLflow store's checkpoint artifacts, an init cache) without extra copies.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator, Mapping, Optional, Sequence

from .errors import HptError

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"  # every temporary file: ``.<name>.<pid>@<host>.<random>.tmp``
_NAME_KEPT = 120  # of the target's name in a temporary name (NAME_MAX is 255 bytes)
_HOST_KEPT = 40
_REASONS = {errno.EROFS: "read-only file system", errno.ENOSPC: "disk full",
            errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}


class OutputError(HptError, ValueError):
    """An output the command must not or cannot write (one of its inputs, a folder, a
    read-only file system, a full disk)."""


class WriteFailure(OutputError, OSError):
    """A write the system refused (read-only, full disk, quota, permission), as one line.
    Still an ``OSError`` with its ``errno``: code that tolerates a failed write (advisory
    files, a fallback place) catches it as before."""


def _failure(message: str, errno_value: int) -> WriteFailure:
    failure = WriteFailure(message)
    failure.errno = errno_value
    return failure


def _cause(exc: BaseException) -> Optional[OSError]:
    """The ``OSError`` the user can fix in ``exc`` or what it was raised from (torch's
    writer wraps them); None for anything else."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in _REASONS:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def write_failure(exc: BaseException, path: os.PathLike,
                  kept: str = "") -> Optional[WriteFailure]:
    """The one-line error of a failure the user can fix (a read-only file system, a full
    disk, a quota, a permission) while writing ``path``; None for any other failure.
    ``kept``: what is left as it was."""
    cause = _cause(exc)
    if cause is None:
        return None
    return _failure(f"cannot write {path}: {_REASONS[cause.errno]}" +
                    (f"; {kept}" if kept else ""), cause.errno)


@contextmanager
def writing(path: os.PathLike, kept: Optional[str] = None) -> Iterator[None]:
    """Turn a read-only file system, a full disk, a quota or a permission refused inside
    the block into one :class:`OutputError` line about ``path`` (see :func:`write_failure`;
    ``kept`` None: whether ``path`` is left as it was or nothing was written)."""
    if kept is None:
        kept = "it is left as it was" if os.path.lexists(path) else "nothing was written"
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:  # noqa: BLE001 - only the failures write_failure knows
        failure = write_failure(exc, path, kept)
        if failure is None:
            raise
        raise failure from None


def make_folder(folder: os.PathLike) -> Path:
    """Create ``folder`` and its parents, or say in one line why not."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in [folder, *folder.parents] if p.exists() and not p.is_dir()),
                        folder)
        raise OutputError(f"cannot create the folder {folder}: {blocking} is a file") from None
    except OSError as exc:
        cause = _cause(exc)
        if cause is None:
            raise
        raise _failure(f"cannot create the folder {folder}: {_REASONS[cause.errno]}",
                       cause.errno) from None
    return folder


def output_file(path: os.PathLike, inputs: Optional[Mapping[str, os.PathLike]] = None) -> Path:
    """``path`` checked, before any work, as a file a command was asked to write: not a
    folder, not one of ``inputs`` (:func:`refuse_inputs`). Nothing is created: its folder
    is made when it is written (:func:`atomic_write`)."""
    text = os.fspath(path)
    if text.endswith(os.sep) or (os.altsep and text.endswith(os.altsep)) or os.path.isdir(text):
        raise OutputError(f"the output {text} is a folder; give a file name (in it)")
    refuse_inputs([text], inputs or {})
    return Path(text)


def temporary_beside(path: os.PathLike, kind: str = "") -> Path:
    """A new, unused name for a temporary file beside ``path``:
    ``.<name>.<pid>@<host>.<random>[.<kind>].tmp`` (hidden)."""
    path = Path(path)
    tag = f".{kind}" if kind else ""
    return path.with_name(f".{path.name[:_NAME_KEPT]}.{os.getpid()}@{this_host()}."
                          f"{secrets.token_hex(4)}{tag}{TEMP_SUFFIX}")


def this_host() -> str:
    """This machine's name as temporary names carry it (letters, digits, ``-``): a
    process id means something only on the machine it runs on."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:_HOST_KEPT] or "host"


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
    make_folder(path.parent)
    remove_stale_temporaries(path)
    with writing(path):
        tmp, fd = _create(path)
        try:
            with os.fdopen(fd, mode, encoding=encoding, newline=newline,
                           errors=errors) as handle:
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: os.PathLike) -> int:
    """Remove the temporary files of ``path`` (:func:`temporary_beside`) whose process
    has ended on this machine (killed, out of disk); returns how many. Those of live
    processes stay (another run writing the same file), and so do those of other
    machines (a job on another node of a shared filesystem)."""
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name[:_NAME_KEPT]}.") + r"(\d+)" +
                         re.escape(f"@{this_host()}.") + r"[0-9a-f]{8}(\.[a-z]+)?" +
                         re.escape(TEMP_SUFFIX))
    removed = 0
    try:
        candidates = [e.name for e in os.scandir(path.parent)
                      if e.name.startswith(f".{path.name[:_NAME_KEPT]}.")]
    except OSError:
        return 0
    for name in candidates:
        match = pattern.fullmatch(name)
        if match is None or _alive(int(match.group(1))):
            continue
        try:
            (path.parent / name).unlink()
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d temporary file(s) of %s left by ended runs", removed, path)
    return removed


def remove_folder_temporaries(folder: os.PathLike) -> int:
    """Remove every temporary file (:func:`temporary_beside`) in ``folder``, whichever
    process or host left it; returns how many. Only for a folder whose writers all hold
    one lock the caller now holds (a stage's checkpoints under its stage lock: a requeued
    job on another node must clear what the preempted one left)."""
    removed = 0
    for path in Path(folder).glob(f".*{TEMP_SUFFIX}"):
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    if removed:
        log.info("removed %d temporary file(s) of interrupted saves in %s", removed, folder)
    return removed


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
    make_folder(target.parent)
    tmp = temporary_beside(target, "link")
    try:
        with writing(target):
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
