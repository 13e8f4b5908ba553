"""A lean MLflow tracking server for a cluster login node (or a test).

One worker, the job runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``), an sqlite
backend whose schema is created first, artifacts proxied from a local folder: ready in
about 10 s with about 0.5 GB of memory, against about 30 s and 2 GB for the defaults.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from .store import DB_NAME, ARTIFACTS_DIR, TrackingError, check_reachable, ensure_store

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerHandle:
    """A running server started by :func:`start_server`."""

    uri: str
    process: subprocess.Popen
    command: List[str]
    log_path: Path

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server's process group (its workers included)."""
        if self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def advertised_host(host: str) -> str:
    """The name clients use: the bind address, or this machine's name for 0.0.0.0/::."""
    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


def server_command(store: Path, host: str, port: int,
                   allowed_hosts: Optional[str] = None) -> List[str]:
    """``mlflow server`` arguments for a store folder holding ``mlflow.db``/``mlartifacts``."""
    store = Path(store).resolve()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{store / DB_NAME}",
           "--artifacts-destination", str(store / ARTIFACTS_DIR),
           "--host", host, "--port", str(port), "--workers", "1"]
    if host not in LOCAL_HOSTS:
        # Compute nodes send the login node's name as Host header; MLflow's default
        # allow-list holds only localhost and private IP addresses.
        name = advertised_host(host)
        short = socket.gethostname()
        cmd += ["--allowed-hosts", allowed_hosts or ",".join(
            sorted({name, short, f"{name}:{port}", f"{short}:{port}"}))]
    elif allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def start_server(store: os.PathLike, host: str = "127.0.0.1", port: Optional[int] = None,
                 wait: float = 90.0, allowed_hosts: Optional[str] = None) -> ServerHandle:
    """Start a lean server on ``store`` and return once it answers API calls."""
    store = Path(store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host if host in LOCAL_HOSTS else "0.0.0.0")
    ensure_store(f"sqlite:///{store / DB_NAME}")  # never let the server race to create it
    cmd = server_command(store, host, port, allowed_hosts)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = store / f"server-{port}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    handle = ServerHandle(f"http://{advertised_host(host)}:{port}", proc, cmd, log_path)
    probe = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    deadline = time.time() + wait
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise TrackingError(f"mlflow server exited with code {proc.returncode}:\n{tail}")
        try:
            check_reachable(probe, timeout=2.0)
            return handle
        except TrackingError:
            if time.time() > deadline:
                handle.stop()
                raise TrackingError(f"mlflow server on {probe} not ready after {wait:.0f} s "
                                    f"(log: {log_path})") from None
            time.sleep(0.5)
