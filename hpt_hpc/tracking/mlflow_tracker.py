"""The :class:`Tracker` interface on one MLflow run: buffered, batched and outage-proof.

Metric values are appended to an in-memory buffer (microseconds on the training thread) and
sent with ``log_batch`` by a background thread every ``flush_seconds``, which also samples
system metrics. Parameters, tags, artifacts, checkpoints (upload + model registration +
alias) and the final status are queued operations, tried at once and retried until they
succeed. A failed send never raises into training: the data stays queued, and what is still
undelivered when the run closes is written to ``mlflow-pending-<run_id>.json`` (replayed when
the stage resumes, or by ``hpt-hpc mlflow sync``).
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..files import link_atomic, write_text_atomic
from .base import Tracker
from .registry import ensure_registered_model, registered_uri, version_source
from .spill import keep_partial, read_spill
from .store import local_artifacts, refuse_credentials
from .sysmetrics import SystemSampler

log = logging.getLogger(__name__)

METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
ENTRIES_PER_BATCH = 100  # params/tags per log_batch
MAX_PARAM_LENGTH = 6000
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "RESOURCE_DOES_NOT_EXIST",
                    "RESOURCE_ALREADY_EXISTS", "INVALID_STATE", "PERMISSION_DENIED"}
SPILL_PREFIX = "mlflow-pending-"


def model_tag(kind: str) -> str:
    """Run tag holding the registry URI of the run's ``kind`` checkpoint."""
    return f"hpt.model.{kind}"


class MlflowTracker(Tracker):
    """Records into the existing MLflow run ``run_id`` (see :func:`make_tracker`).

    ``model_name``/``alias``: register logged checkpoints as versions of that model and point
    ``<alias>`` (final) or ``<alias>-<kind>`` at them. ``known_params``/``known_tags``: what
    the run already holds (a resumed run), so unchanged values are not sent again.
    """

    def __init__(self, client: Any, run_id: str, *, tracking_uri: str,
                 model_name: Optional[str] = None, alias: Optional[str] = None,
                 spill_dir: Optional[os.PathLike] = None, flush_seconds: float = 10.0,
                 close_timeout: float = 60.0, system_metrics: bool = True,
                 known_params: Optional[Mapping[str, str]] = None,
                 known_tags: Optional[Mapping[str, str]] = None) -> None:
        self.client, self.run_id, self.tracking_uri = client, run_id, tracking_uri
        self.model_name, self.alias = model_name, alias
        self.spill_path = Path(spill_dir) / f"{SPILL_PREFIX}{run_id}.json" if spill_dir else None
        self.flush_seconds, self.close_timeout = flush_seconds, close_timeout
        self.failures = 0  # failed send attempts (transient errors, retried)
        self.dropped = 0  # items refused by the store for good (bad values)
        self.last_error: Optional[str] = None
        self.model_uris: Dict[str, str] = {}
        self._params = dict(known_params or {})
        self._tags = dict(known_tags or {})
        for key, value in self._tags.items():
            if key.startswith("hpt.model.") and not key.endswith("_version"):
                self.model_uris[key.split(".")[2]] = value
        # Buffered metric values as four columns (key, value, ms timestamp, step): appending
        # floats and ints allocates no garbage-collected objects on the training thread.
        self._cols: tuple = ([], [], [], [])
        self._ops: List[list] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._step = 0
        self._closed = False
        self._healthy = True  # False during an outage: callers then only queue
        self.partial_spill: Optional[Path] = None  # a cut spill file, moved aside
        self.spill_loaded = (0, 0)  # metric values, operations read from the spill file
        self._spill_loaded = self._load_spill()
        self._sampler = None
        if system_metrics:
            self._sampler = SystemSampler()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._background, daemon=True,
                                        name=f"mlflow-{run_id[:8]}")
        self._thread.start()

    # -- the Tracker interface ------------------------------------------------------------
    def log_params(self, params: Mapping[str, Any]) -> None:
        new, changed = {}, []
        for key, value in params.items():
            text = str(value)[:MAX_PARAM_LENGTH]
            if key not in self._params:
                new[key] = self._params[key] = text
            elif self._params[key] != text:
                changed.append(f"{key}: {self._params[key]!r} -> {text!r}")
        if changed:
            log.warning("tracking: run %s keeps its first parameter values (MLflow parameters "
                        "are immutable); changed: %s", self.run_id, "; ".join(changed[:5]))
        if new:
            self._queue("params", new)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        stamp, step = int(time.time() * 1000), int(step)
        with self._lock:
            keys, values, stamps, steps = self._cols
            for key, value in metrics.items():
                keys.append(key)
                values.append(float(value))
                stamps.append(stamp)
                steps.append(step)
            self._step = step

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        new = {k: str(v) for k, v in tags.items() if self._tags.get(k) != str(v)}
        if new:
            self._tags.update(new)
            self._queue("tags", new)

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self._queue("file", [str(path), artifact_path])

    def log_checkpoint(self, path: str, kind: str = "final") -> Optional[str]:
        """Upload ``path`` to ``checkpoints/``, register it as a model version and move the
        alias onto it; return ``models:/<name>@<alias>`` once registered."""
        if kind not in self.model_uris:
            self._queue("checkpoint", {"path": str(path), "kind": kind, "uploaded": False,
                                       "version": None})
        return self.model_uris.get(kind)

    def flush(self) -> None:
        """Send what is buffered now (one try; during an outage the caller does not wait:
        the background thread keeps retrying)."""
        if self._healthy:
            self._send()

    def close(self, status: Optional[str] = "FINISHED", timeout: Optional[float] = None) -> None:
        """Stop the background thread, end the run with ``status`` and deliver everything,
        retrying for up to ``timeout`` seconds; then keep the rest in the spill file."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join()
        self._sample()
        if status:
            self._queue("status", status, send=False)
        deadline = time.time() + (self.close_timeout if timeout is None else timeout)
        pause = 0.5
        while not self._send():
            if time.time() + pause > deadline:
                self._spill()
                return
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def summary(self) -> Dict[str, Any]:
        with self._lock:
            pending = len(self._cols[0]) + len(self._ops)
        return {"run_id": self.run_id, "failures": self.failures, "dropped": self.dropped,
                "pending": pending, "models": dict(self.model_uris)}

    # -- queue and delivery ----------------------------------------------------------------
    def _queue(self, kind: str, payload: Any, send: bool = True) -> None:
        with self._lock:
            self._ops.append([kind, payload])
        if send and self._healthy:
            self._send()

    def _background(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._sample()
            self._send()

    def _sample(self) -> None:
        if self._sampler is None:
            return
        try:
            self.log_metrics(self._sampler.sample(), self._step)
        except Exception as exc:  # a sensor failing must not stop anything
            log.debug("tracking: system metrics unavailable: %s", exc)

    def _send(self, blocking: bool = True) -> bool:
        """Deliver buffered metrics, then queued operations in order; True when all went.
        Not ``blocking``: give up at once when another thread is sending."""
        if not self._send_lock.acquire(blocking=blocking):
            return False
        try:
            done = self._send_metrics() and self._send_ops()
        except Exception as exc:  # never raise into training
            self._failed(exc)
            done = False
        finally:
            self._send_lock.release()
        if done:
            self._healthy = True
        if done and self._spill_loaded and self.spill_path is not None:
            self.spill_path.unlink(missing_ok=True)
            self._spill_loaded = False
        return done

    def _send_metrics(self) -> bool:
        from mlflow.entities import Metric
        with self._lock:
            metrics = list(zip(*self._cols))
            self._cols = ([], [], [], [])
        for i in range(0, len(metrics), METRICS_PER_BATCH):
            chunk = metrics[i:i + METRICS_PER_BATCH]
            try:
                self.client.log_batch(self.run_id, metrics=[Metric(*m) for m in chunk])
            except Exception as exc:
                if not self._dropped_for_good(exc, f"{len(chunk)} metric values"):
                    self._put_back(metrics[i:])
                    return False
        return True

    def _send_ops(self) -> bool:
        while True:
            with self._lock:
                if not self._ops:
                    return True
                op = self._ops[0]
            try:
                self._run(*op)
            except Exception as exc:
                if not self._dropped_for_good(exc, f"'{op[0]}' operation"):
                    return False
            with self._lock:
                self._ops.pop(0)

    def _run(self, kind: str, payload: Any) -> None:
        from mlflow.entities import Param, RunTag
        if kind == "params":
            items = [Param(k, v) for k, v in payload.items()]
            for i in range(0, len(items), ENTRIES_PER_BATCH):
                self.client.log_batch(self.run_id, params=items[i:i + ENTRIES_PER_BATCH])
        elif kind == "tags":
            items = [RunTag(k, v) for k, v in payload.items()]
            for i in range(0, len(items), ENTRIES_PER_BATCH):
                self.client.log_batch(self.run_id, tags=items[i:i + ENTRIES_PER_BATCH])
        elif kind == "file":
            self.client.log_artifact(self.run_id, payload[0], payload[1])
        elif kind == "checkpoint":
            self._register(payload)
        elif kind == "status":
            self.client.set_terminated(self.run_id, payload)

    def _register(self, state: Dict[str, Any]) -> None:
        """Upload a checkpoint and register it; resumable step by step after a failure."""
        from mlflow.entities import RunTag
        name, kind = os.path.basename(state["path"]), state["kind"]
        if not state["uploaded"]:
            local = local_artifacts(self.client, self.run_id)
            if local is not None:  # a local store: the artifact is the same file, linked
                link_atomic(state["path"], local / "checkpoints" / name)
            else:
                self.client.log_artifact(self.run_id, state["path"], "checkpoints")
            state["uploaded"] = True
        if not self.model_name:
            return
        if state["version"] is None:
            ensure_registered_model(self.client, self.model_name)
            version = self.client.create_model_version(
                self.model_name, version_source(self.run_id, f"checkpoints/{name}"),
                run_id=self.run_id,
                tags={"hpt.kind": kind, **{k: v for k, v in self._tags.items()
                                            if k in ("hpt.pipeline", "hpt.stage", "hpt.method")}},
                await_creation_for=0)
            state["version"] = version.version
        alias = self.alias if kind == "final" else f"{self.alias}-{kind}"
        self.client.set_registered_model_alias(self.model_name, alias, state["version"])
        uri = registered_uri(self.model_name, alias)
        tags = {model_tag(kind): uri, f"{model_tag(kind)}_version": str(state["version"])}
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self._tags.update(tags)
        self.model_uris[kind] = uri

    def _dropped_for_good(self, exc: Exception, what: str) -> bool:
        """True (and a warning) when the store refused ``what`` for good; else count a
        transient failure and keep the item queued."""
        code = getattr(exc, "error_code", None)
        if code in PERMANENT_ERRORS:
            self.dropped += 1
            log.warning("tracking: run %s: dropped %s refused by the store: %s", self.run_id,
                        what, exc)
            return True
        self._failed(exc)
        return False

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        self._healthy = False
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.failures == 1 or self.failures % 20 == 0:
            log.warning("tracking: run %s: store unavailable (%d failed tries; data kept and "
                        "retried): %s", self.run_id, self.failures, self.last_error[:300])

    # -- spill file ------------------------------------------------------------------------
    def _spill(self) -> None:
        with self._lock:
            data = {"run_id": self.run_id, "tracking_uri": self.tracking_uri,
                    "model_name": self.model_name, "alias": self.alias,
                    "metrics": list(zip(*self._cols)), "ops": self._ops}
        if self.spill_path is None:
            log.error("tracking: run %s: %d metric values and %d operations could not be "
                      "delivered and are lost (no spill folder)", self.run_id,
                      len(data["metrics"]), len(data["ops"]))
            return
        write_text_atomic(self.spill_path, json.dumps(data))
        log.warning("tracking: run %s: store unreachable at close; %d metric values and %d "
                    "operations kept in %s (sent when the stage resumes, or run "
                    "`hpt-hpc mlflow sync %s`)", self.run_id, len(data["metrics"]),
                    len(data["ops"]), self.spill_path, self.spill_path.parent)

    def _load_spill(self) -> bool:
        """Queue what the spill file holds (a cut file: its whole records, and the file
        moved aside to ``self.partial_spill``); True when the file is to be removed once
        everything was delivered."""
        if self.spill_path is None or not self.spill_path.is_file():
            return False
        data, whole = read_spill(self.spill_path)
        if data.get("run_id") != self.run_id:
            return False
        metrics = [m for m in data.get("metrics", []) if isinstance(m, list) and len(m) == 4]
        ops = [o for o in data.get("ops", []) if isinstance(o, list) and len(o) == 2]
        self._put_back(metrics)
        self._ops = ops + self._ops
        self.spill_loaded = (len(metrics), len(ops))
        if whole:
            return True
        self.partial_spill = keep_partial(self.spill_path)
        log.warning("tracking: run %s: spill file %s is cut short; its %d whole metric "
                    "values and %d operations are queued, the file is kept as %s",
                    self.run_id, self.spill_path, len(metrics), len(ops), self.partial_spill)
        return False

    def _put_back(self, rows: List[tuple]) -> None:
        """Return unsent ``(key, value, timestamp, step)`` rows to the front of the buffer."""
        with self._lock:
            for column, values in (zip(self._cols, zip(*rows)) if rows else ()):
                column[:0] = values


def sync_pending(folder: os.PathLike, timeout: float = 60.0) -> Dict[str, Dict[str, Any]]:
    """Deliver every spill file under ``folder`` to the store it was meant for. A cut
    file's summary says what of it was sent (``synced``) and where it is kept (``kept``);
    one without a run and store to send to is left in place (``unreadable``)."""
    from mlflow import MlflowClient
    out = {}
    for path in sorted(Path(folder).rglob(f"{SPILL_PREFIX}*.json")):
        data, _ = read_spill(path)
        uri, run_id = data.get("tracking_uri"), data.get("run_id")
        if not isinstance(uri, str) or not isinstance(run_id, str) or \
                path.name != f"{SPILL_PREFIX}{run_id}.json":
            out[str(path)] = {"pending": 0, "unreadable": True}
            continue
        refuse_credentials(uri)
        tracker = MlflowTracker(MlflowClient(uri, uri), run_id, tracking_uri=uri,
                                model_name=data.get("model_name"), alias=data.get("alias"),
                                spill_dir=path.parent, system_metrics=False)
        tracker.close(status=None, timeout=timeout)
        out[str(path)] = tracker.summary()
        if tracker.partial_spill is not None:
            out[str(path)].update(kept=str(tracker.partial_spill), synced=tracker.spill_loaded)
    return out
