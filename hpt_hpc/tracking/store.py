"""Where runs go: tracking URIs, the embedded sqlite store, reachability and server rules.

Resolution order of the tracking URI: ``MLFLOW_TRACKING_URI`` > ``tracking.uri`` >
``sqlite:///<output_dir>/mlflow.db`` (absolute). An sqlite store keeps its artifacts in
``mlartifacts/`` next to the database. Nothing here imports MLflow at module level.
"""
from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

from ..errors import HptError
from ..files import atomic_write

log = logging.getLogger(__name__)

DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
# sqlite with more concurrent writers than this: use a server (8 were tested with 0 errors).
MAX_SQLITE_WRITERS = 8
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "lustre", "gpfs", "cifs", "smb", "smb2", "smb3", "smbfs", "beegfs",
    "ceph", "cephfs", "glusterfs", "panfs", "wekafs", "afs", "9p", "ocfs2", "gfs2",
    "orangefs", "pvfs2", "quobyte", "vastfs"})
SERVER_SCHEMES = ("http", "https", "databricks")
UI_KIND_TAG = ("mlflow.experimentKind", "custom_model_development")  # classic runs view


class TrackingError(HptError):
    """The tracking store cannot be used as configured (unreachable, wrong kind, ...)."""


class AccessDenied(TrackingError):
    """A server answered 401/403 to the credentials in the environment (or to none)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class StoreMissing(TrackingError):
    """A command that only reads found no store where it looked (none is created)."""


def default_uri(output_dir: str) -> str:
    """``sqlite:///<absolute output_dir>/mlflow.db``."""
    return "sqlite:///" + str(Path(output_dir).resolve() / DB_NAME)


def normalize_uri(uri: str) -> str:
    """Absolute sqlite paths; reject plain paths, the (maintenance-mode) file store and
    credentials inside the URI (they would reach params, artifacts, records and logs)."""
    refuse_credentials(uri)
    scheme = urlparse(uri).scheme
    if scheme == "sqlite":
        path = uri[len("sqlite:///"):] if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            raise TrackingError(f"tracking URI '{uri}': use sqlite:///<path>/mlflow.db")
        if not path.startswith("/"):  # sqlite:///relative.db -> absolute
            return "sqlite:///" + str(Path(path).resolve())
        return uri
    if scheme in ("", "file") or len(scheme) == 1:  # a plain path, or a Windows drive letter
        raise TrackingError(
            f"tracking URI '{uri}' is a plain path (MLflow's file store, in maintenance mode); "
            f"use sqlite:///{Path(uri.replace('file://', '')).resolve() / DB_NAME} or a "
            f"server URI http://host:port")
    return uri


def refuse_credentials(uri: str) -> None:
    """Refuse a URI with a user name or password in it (never repeating them): they would
    reach params, artifacts, records, logs and error messages."""
    parsed = urlparse(uri)
    if "@" in parsed.netloc:
        host = parsed.netloc.rsplit("@", 1)[1]
        raise TrackingError(f"the tracking URI carries a user name or password "
                            f"({parsed.scheme}://…@{host}): remove them and set "
                            f"MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD instead "
                            f"(a URI is stored in params, checkpoints and records)")


def resolve_uri(configured: Optional[str], output_dir: str) -> str:
    """The tracking URI: env ``MLFLOW_TRACKING_URI`` > ``configured`` > the embedded
    store of ``output_dir``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or configured or default_uri(output_dir)
    return normalize_uri(uri)


def is_server_uri(uri: str) -> bool:
    return urlparse(uri).scheme in SERVER_SCHEMES


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of an ``sqlite:///`` URI (``None`` for other stores)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def artifact_root(uri: str) -> Optional[str]:
    """Local artifact root of an sqlite store (``<db folder>/mlartifacts``); servers decide."""
    db = sqlite_path(uri)
    return str(db.parent / ARTIFACTS_DIR) if db is not None else None


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing); works across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _schema_present(db: Path) -> bool:
    if not db.is_file() or db.stat().st_size == 0:
        return False
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            return {"alembic_version", "experiments", "runs"} <= names and bool(
                con.execute("SELECT 1 FROM experiments LIMIT 1").fetchone())
        finally:
            con.close()
    except sqlite3.Error:
        return False


def ensure_store(uri: str) -> bool:
    """Create an sqlite store's schema once, under a file lock (no-op for servers); True
    when this call created it.

    Call this before parallel tasks start: N processes creating one new database at the same
    time corrupt it. With the lock, the first caller creates it and the others find it. The
    schema is built in a scratch file (in memory-backed ``/dev/shm`` where there is one: the
    migrations' many commits are slow on disk) and moved into place whole.
    """
    db = sqlite_path(uri)
    if db is None:
        return False
    with file_lock(db.with_name(db.name + ".lock")):
        if _schema_present(db):
            return False
        log.info("tracking: creating MLflow store %s", db)
        scratch = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        try:
            _create_schema(scratch / DB_NAME, artifact_root(uri))
            with open(scratch / DB_NAME, "rb") as source, \
                    atomic_write(db, durable=True) as target:
                shutil.copyfileobj(source, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return True


def _create_schema(db: Path, artifacts: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    uri = f"sqlite:///{db}"
    chatty = logging.getLogger("mlflow.store.db.utils")  # two lines per new store
    level = chatty.level
    chatty.setLevel(logging.WARNING)
    try:
        store = SqlAlchemyStore(uri, artifacts)
    finally:
        chatty.setLevel(level)
    # Drop the cached engine: a forked child must not inherit its connections.
    SqlAlchemyStore._engine_map.pop(uri, None)
    store.engine.dispose()


def check_reachable(uri: str, timeout: float = 10.0) -> None:
    """Fail fast with a clear :class:`TrackingError` when ``uri`` cannot take runs."""
    refuse_credentials(uri)
    db = sqlite_path(uri)
    if db is not None:
        folder = db.parent
        while not folder.exists():
            folder = folder.parent
        if not os.access(folder, os.W_OK):
            raise TrackingError(f"tracking store {uri}: folder {folder} is not writable")
        if db.is_file():
            _check_writable(db)
        return
    scheme = urlparse(uri).scheme
    if scheme not in ("http", "https"):
        return  # databases and hosted stores: MLflow reports their errors itself
    import requests
    base = uri.rstrip("/")
    auth = None
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"],
                os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    headers = {}
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    try:
        resp = requests.get(f"{base}/api/2.0/mlflow/experiments/search",
                            params={"max_results": 1}, timeout=timeout, auth=auth,
                            headers=headers)
    except requests.RequestException as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}: {exc}). "
            f"Start one with `hpt-hpc mlflow serve`, fix MLFLOW_TRACKING_URI / tracking.uri, "
            f"or unset both to use the embedded sqlite store") from None
    if resp.status_code in (401, 403):
        raise AccessDenied(f"{uri} answered HTTP {resp.status_code} to an MLflow API call: "
                           f"access denied to the account in MLFLOW_TRACKING_USERNAME/"
                           f"MLFLOW_TRACKING_PASSWORD (or to no account)", resp.status_code)
    if resp.status_code != 200:
        raise TrackingError(f"{uri} answered HTTP {resp.status_code} to an MLflow API call "
                            f"(not an MLflow server, or access denied): {resp.text[:200]}")


def _check_writable(db: Path) -> None:
    """A write rolled back at once: a read-only file, mount or folder fails here with one
    clear error instead of a long SQLAlchemy traceback in the first run."""
    try:
        con = sqlite3.connect(str(db), timeout=30, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("CREATE TABLE hpt_write_probe (x INTEGER)")  # undone below
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise TrackingError(f"tracking store {db} cannot be written ({exc}); fix its "
                            f"permissions or point tracking.uri elsewhere") from None


def filesystem_type(path: os.PathLike) -> str:
    """Type of the filesystem holding ``path`` (its nearest existing parent), from
    psutil's list of mounted partitions; ``"unknown"`` where that cannot be read."""
    import psutil
    target = Path(path).resolve()
    while not target.exists() and target != target.parent:
        target = target.parent
    try:
        partitions = psutil.disk_partitions(all=True)
    except OSError:
        return "unknown"
    best, fstype = "", "unknown"
    for part in partitions:
        mount = part.mountpoint
        if (str(target) == mount or str(target).startswith(mount.rstrip("/") + "/")) \
                and len(mount) > len(best):
            best, fstype = mount, part.fstype
    return fstype


def is_network_fs(fstype: str) -> bool:
    return fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse") or fstype.startswith("nfs")


def requires_server(uri: str, num_tasks: int, path_fs_type: Optional[str] = None,
                    nodes: int = 1) -> Optional[str]:
    """Why ``num_tasks`` concurrent writers must not use ``uri`` directly (``None``: fine).

    sqlite takes whole-file locks: over a network filesystem (NFS, Lustre, GPFS, ...) they are
    unreliable and slow, so several writers there need a server; on a local disk up to
    :data:`MAX_SQLITE_WRITERS` writers work, more need a server; a local disk is invisible to
    tasks on other nodes. Servers and real databases (PostgreSQL, MySQL) always pass.
    """
    db = sqlite_path(uri)
    if db is None or num_tasks <= 1:
        return None
    fstype = path_fs_type or filesystem_type(db)
    if is_network_fs(fstype):
        return (f"{num_tasks} tasks would write to the sqlite store {db} on a network "
                f"filesystem ({fstype}), where sqlite locking is unreliable")
    if num_tasks > MAX_SQLITE_WRITERS:
        return (f"{num_tasks} concurrent writers exceed the {MAX_SQLITE_WRITERS} that one "
                f"sqlite store {db} serves reliably")
    if nodes > 1:
        return (f"tasks on {nodes} nodes cannot share the sqlite store {db} on a local "
                f"disk ({fstype})")
    return None


def server_advice(reason: str) -> str:
    """A :func:`requires_server` reason plus the remedy, for launcher messages."""
    return (f"{reason}. Start a tracking server on the login node (`hpt-hpc mlflow serve "
            f"--store <dir> --host 0.0.0.0`) and set MLFLOW_TRACKING_URI (or tracking.uri) "
            f"to the URI it prints")


def prepare_store(uri: str, num_tasks: int = 1, nodes: int = 1,
                  timeout: float = 10.0) -> str:
    """Pre-flight for a launch: refuse unsafe sqlite use, fail fast on an unreachable
    server, create the sqlite schema once. Returns ``uri``."""
    reason = requires_server(uri, num_tasks, nodes=nodes)
    if reason:
        raise TrackingError(server_advice(reason))
    check_reachable(uri, timeout)
    ensure_store(uri)
    return uri


def client_for(uri: str) -> Any:
    """An ``MlflowClient`` on ``uri`` (sqlite schema created once; servers checked)."""
    if not is_server_uri(uri):
        ensure_store(uri)
    return _client(uri)


def reader_for(uri: str, hint: str = "run `hpt-hpc train`, `launch` or `sweep` first, or "
                                     "name the store that holds the runs") -> Any:
    """An ``MlflowClient`` for a command that only reads: an sqlite store must exist and
    is never created (nor its lock file); :class:`StoreMissing` says where it looked,
    with ``hint``."""
    db = sqlite_path(uri)
    if db is not None and not _schema_present(db):
        what = "no MLflow store at" if not db.exists() else "not an MLflow store:"
        raise StoreMissing(f"{what} {db} (nothing was tracked there yet): {hint}")
    return _client(uri)


def _client(uri: str) -> Any:
    from mlflow import MlflowClient
    refuse_credentials(uri)
    if is_server_uri(uri):
        # Keep one failed request short (MLflow's default retries for minutes): the tracker
        # retries on its own schedule without blocking training.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0.5")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        check_reachable(uri)
    return MlflowClient(uri, uri)


def local_artifacts(client: Any, run_id: str) -> Optional[Path]:
    """The folder of a run's artifacts when the store keeps them on this filesystem (a
    sqlite store's artifact root); None for a server or a remote artifact store."""
    uri = client.get_run(run_id).info.artifact_uri
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        return None
    return Path(parsed.path)
