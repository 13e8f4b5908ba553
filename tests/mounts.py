"""The real CLI in a private mount namespace: a read-only folder (a bind mount remounted
read-only) or a full disk (a small tmpfs) seen by that one command only.

Root ignores file permissions, so ``chmod`` cannot make a folder read-only for the tests
(CI runs as root); a mount can. ``unshare --mount`` needs root or a user namespace; every
machine the suite runs on has one (``mounts_work()`` says so, and the suite fails loudly
where it does not rather than skipping)."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Sequence, Tuple

Mount = Tuple[str, Path, int]  # ("ro", folder, 0) or ("tmpfs", folder, size in KiB)


def read_only(folder: Path) -> Mount:
    """``folder`` (existing, with its files) read-only for the command."""
    return ("ro", Path(folder), 0)


def full_disk(folder: Path, kib: int = 64) -> Mount:
    """An empty tmpfs of ``kib`` KiB at ``folder`` (created if needed) for the command:
    writes fail with ENOSPC once it is full. Files in ``folder`` beforehand are hidden."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return ("tmpfs", Path(folder), kib)


def _mount_commands(mounts: Iterable[Mount]) -> str:
    steps = []
    for kind, folder, size in mounts:
        where = shlex.quote(str(folder))
        if kind == "ro":
            steps.append(f"mount --bind {where} {where} && mount -o remount,bind,ro {where}")
        elif kind == "tmpfs":
            steps.append(f"mount -t tmpfs -o size={int(size)}k tmpfs {where}")
        else:  # pragma: no cover - a typo in a test
            raise ValueError(kind)
    return " && ".join(steps) or "true"


def shell_in_mounts(script: str, mounts: Sequence[Mount], cwd=None, env=None,
                    timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a shell ``script`` with ``mounts`` in place (private to it)."""
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         f"{_mount_commands(mounts)} && {script}"],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def cli_in_mounts(args: Sequence[str], mounts: Sequence[Mount], cwd=None, env=None,
                  timeout: int = 300) -> subprocess.CompletedProcess:
    """``hpt-hpc ARGS`` (this interpreter's package) with ``mounts`` in place."""
    command = " ".join(shlex.quote(a) for a in
                       [sys.executable, "-m", "hpt_hpc.cli.main", *map(str, args)])
    return shell_in_mounts(f"exec {command}", mounts, cwd=cwd, env=env, timeout=timeout)


def mounts_work(tmp: Path) -> bool:
    """True where a private read-only bind mount can be made (root or a user namespace)."""
    probe = Path(tmp) / "mount-probe"
    probe.mkdir(parents=True, exist_ok=True)
    out = shell_in_mounts(f"touch {shlex.quote(str(probe))}/x", [read_only(probe)])
    return out.returncode != 0 and "Read-only" in out.stderr
