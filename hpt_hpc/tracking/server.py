"""A lean MLflow tracking server for a cluster login node (or a test).

One worker, the job runner off (``MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false``), an sqlite
backend whose schema is created first, artifacts proxied from a local folder: ready in
about 10 s with about 0.5 GB of memory, against about 30 s and 2 GB for the defaults.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from .store import (ARTIFACTS_DIR, DB_NAME, AccessDenied, TrackingError, check_reachable,
                    ensure_store)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
# Host headers of requests through an SSH tunnel (`ssh -L <port>:localhost:<port> login`):
# the browser names the laptop's end, the request arrives on the login node's loopback
TUNNEL_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*")


@dataclass
class ServerHandle:
    """A running server started by :func:`start_server`."""

    uri: str
    process: subprocess.Popen
    command: List[str]
    log_path: Path
    new_store: Optional[Path] = None  # the database created for it (none was there)
    password_updated: Optional[str] = None  # the admin whose password was changed (--auth)

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server's process group (its workers included, also when the server
        itself already ended) and return once no process of it is left (a second stop
        signal meanwhile does not interrupt this)."""
        with _signals_deferred(reraise=False):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                if not _group_alive(self.process):
                    return
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    return
                deadline = time.time() + timeout
                while time.time() < deadline and _group_alive(self.process):
                    time.sleep(0.05)


def _group_alive(leader: subprocess.Popen) -> bool:
    """Whether a process of ``leader``'s group (its pid: it started a session) still runs;
    the leader is reaped here, orphaned zombies do not count."""
    import psutil
    leader.poll()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == leader.pid and proc.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return False


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_deferred: dict = {"active": False}


def stop_on_signals() -> None:
    """SIGTERM, SIGINT and SIGHUP end this process with ``SystemExit(0)`` at any moment
    (so ``finally`` blocks stop the server); while :func:`start_server` creates the server
    process they wait until its handle exists."""
    def _stop(signum, frame):
        if _deferred["active"]:
            _deferred["pending"] = signum
            return
        raise SystemExit(0)
    for sig in STOP_SIGNALS:
        signal.signal(sig, _stop)


@contextmanager
def _signals_deferred(reraise: bool = True):
    """Hold the stop signals of :func:`stop_on_signals` back for the block; ``reraise``:
    act on one that came meanwhile at its end."""
    outer = _deferred["active"]
    if not outer:
        _deferred.pop("pending", None)
    _deferred["active"] = True
    try:
        yield
    finally:
        _deferred["active"] = outer
    if reraise and not outer and _deferred.pop("pending", None) is not None:
        raise SystemExit(0)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def advertised_host(host: str) -> str:
    """The name clients use: the bind address, or this machine's name for 0.0.0.0/::."""
    return socket.getfqdn() if host in ("0.0.0.0", "::", "") else host


AUTH_INI = "basic-auth.ini"
AUTH_DB = "basic-auth.db"
CREDENTIAL_ENV = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
POOL_OVERFLOW = 80  # database connections beyond the pool's 5 (see start_server)
MIN_PASSWORD = 12  # MLflow's basic-auth app refuses shorter passwords


def server_command(store: Path, host: str, port: int, allowed_hosts: Optional[str] = None,
                   auth: bool = False) -> List[str]:
    """``mlflow server`` arguments for a store folder holding ``mlflow.db``/``mlartifacts``
    (``auth``: MLflow's basic-auth app)."""
    store = Path(store).resolve()
    cmd = [sys.executable, "-m", "mlflow", "server",
           "--backend-store-uri", f"sqlite:///{store / DB_NAME}",
           "--artifacts-destination", str(store / ARTIFACTS_DIR),
           "--host", host, "--port", str(port), "--workers", "1"]
    if auth:
        cmd += ["--app-name", "basic-auth"]
    if host not in LOCAL_HOSTS:
        # Compute nodes send the login node's name as Host header; MLflow's default
        # allow-list holds only localhost and private IP addresses, and a list of our own
        # replaces it: the tunnel's names are kept.
        name = advertised_host(host)
        short = socket.gethostname()
        cmd += ["--allowed-hosts", allowed_hosts or ",".join(
            sorted({name, short, f"{name}:{port}", f"{short}:{port}", *TUNNEL_HOSTS}))]
    elif allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on: the server would die, and whatever
    answers there would receive every run, config and checkpoint."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # as the server binds: a closed connection in TIME_WAIT does not hold the port,
        # a listener does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host if host not in ("", "0.0.0.0") else "0.0.0.0", port))
        except OSError as exc:
            raise TrackingError(f"port {port} on {host} is taken by another process "
                                f"({exc.strerror}); nothing was started. Choose another "
                                f"--port, or --port 0 for a free one") from None


def _auth_environment(store: Path) -> Tuple[dict, Optional[str]]:
    """The basic-auth app's settings: its user database in the store, no anonymous
    access, and the admin account from MLFLOW_TRACKING_USERNAME/PASSWORD (passed in the
    environment only: never written to a file); and the admin's name when its password
    in an existing user database was changed to that one (:func:`_update_admin`)."""
    user, password = (os.environ.get(k, "") for k in CREDENTIAL_ENV)
    if not user or not password:
        raise TrackingError(f"--auth needs the admin account in {CREDENTIAL_ENV[0]} and "
                            f"{CREDENTIAL_ENV[1]} (the same variables the jobs use to log in)")
    if len(password) < MIN_PASSWORD:
        raise TrackingError(f"{CREDENTIAL_ENV[1]} has fewer than {MIN_PASSWORD} characters, "
                            f"which MLflow's basic-auth app refuses; nothing was started")
    updated = user if _update_admin(store / AUTH_DB, user, password) else None
    ini = store / AUTH_INI
    ini.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                   f"database_uri = sqlite:///{store / AUTH_DB}\nadmin_username = {user}\n"
                   "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    return {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_USERNAME": user,
            "MLFLOW_AUTH_ADMIN_PASSWORD": password,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32)}, updated


def _update_admin(db: Path, user: str, password: str) -> bool:
    """Give ``user`` of an existing basic-auth database ``password`` (MLflow itself only
    sets it when it creates the user, so a changed MLFLOW_TRACKING_PASSWORD would answer
    401 to the jobs); True when it changed. The database keeps a salted hash only."""
    if not db.is_file():
        return False
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore
    users = SqlAlchemyStore()
    users.init_db(f"sqlite:///{db}")
    try:
        if not users.has_user(user, use_primary=True) or \
                users.authenticate_user(user, password, use_primary=True):
            return False
        users.update_user(user, password=password)
        return True
    finally:
        users.engine.dispose()


def _listening_pids(port: int) -> set:
    """Processes listening on ``port`` that this user may inspect."""
    import psutil
    pids = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port \
                and conn.pid:
            pids.add(conn.pid)
    return pids


def owns_port(proc: subprocess.Popen, port: int) -> bool:
    """True when ``proc`` or one of its descendants listens on ``port``."""
    import psutil
    try:
        family = {proc.pid} | {c.pid for c in psutil.Process(proc.pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return False
    return bool(_listening_pids(port) & family)


def start_server(store: os.PathLike, host: str = "127.0.0.1", port: Optional[int] = None,
                 wait: float = 90.0, allowed_hosts: Optional[str] = None,
                 auth: bool = False) -> ServerHandle:
    """Start a lean server on ``store`` and return once it answers API calls and the
    process listening on the port is provably its own (``port`` 0 or None: a free one)."""
    store = Path(store).resolve()
    store.mkdir(parents=True, exist_ok=True)
    port = port or free_port(host if host in LOCAL_HOSTS else "0.0.0.0")
    check_port_free(host, port)
    created = ensure_store(f"sqlite:///{store / DB_NAME}")  # before the server: no race
    cmd = server_command(store, host, port, allowed_hosts, auth)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    # MLflow's log_batch holds one pooled database connection while it takes a second:
    # with SQLAlchemy's default pool (5 + 10 overflow) 15 concurrent batches deadlock the
    # server for good (seen with 64 writers). Requests run on at most 40 threads (anyio's
    # default), so 2 x 40 connections can never run out.
    env.setdefault("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW", str(POOL_OVERFLOW))
    env.pop("MLFLOW_TRACKING_URI", None)
    updated = None
    if auth:
        settings, updated = _auth_environment(store)
        env.update(settings)
    log_path = store / f"server-{port}.log"
    handle = None
    try:
        with _signals_deferred():  # a stop signal in Popen would lose the process
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)
            handle = ServerHandle(f"http://{advertised_host(host)}:{port}", proc, cmd,
                                  log_path, store / DB_NAME if created else None, updated)
        _wait_ready(handle, host, port, wait)
    except BaseException:  # an error, a timeout or a stop signal: no server is left
        if handle is not None:
            handle.stop()
        raise
    return handle


def _wait_ready(handle: ServerHandle, host: str, port: int, wait: float) -> None:
    proc, log_path = handle.process, handle.log_path
    probe = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    deadline = time.time() + wait
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise TrackingError(f"mlflow server exited with code {proc.returncode}:\n{tail}")
        try:
            check_reachable(probe, timeout=2.0)
            if owns_port(proc, port):
                return
        except AccessDenied as exc:  # waiting longer would not change the answer
            raise TrackingError(f"mlflow server on {probe} refuses the account in "
                                f"{CREDENTIAL_ENV[0]}/{CREDENTIAL_ENV[1]} (HTTP "
                                f"{exc.status}); nothing was left running (log: "
                                f"{log_path})") from None
        except TrackingError:
            pass
        if time.time() > deadline:
            raise TrackingError(f"mlflow server on {probe} not ready (or not the process "
                                f"answering there) after {wait:.0f} s (log: {log_path})")
        time.sleep(0.5)
