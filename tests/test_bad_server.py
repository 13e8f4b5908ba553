"""Hostile inputs, round two (#24): server lifecycle and refused runs that touch nothing
shared, through the real CLI.

Issue case -> mechanism -> test:
 3. SIGTERM/SIGINT to `mlflow serve` at any moment -> serve stops the server's whole
    process group (signals deferred while the process is created, the group stopped on
    any exit of start-up, its stop waits for every member) -> test_serve_stops_its_group
 2. `serve --auth` restarted with another MLFLOW_TRACKING_PASSWORD -> serve owns the
    store's basic-auth.db and updates the admin's password at start (one line, no
    password); a 401 during start-up stops it at once
    -> test_serve_auth_takes_a_changed_password
 6. credentials in a --tracking-uri (report) -> tracking.store.refuse_credentials, the one
    check normalize_uri (train's) uses, also run by every client and reachability check;
    report normalizes its URI like the other commands
    -> test_credentials_in_a_tracking_uri_are_refused_everywhere
 16. a `train` refused by the stage lock -> train takes every stage's lock (stage_lock, now
    a no-op when this process holds it) before the pipeline run and launch records
    -> test_a_train_refused_by_the_stage_lock_touches_nothing_shared
 15. `cancel` that did not cancel -> launch.states.cancel_slurm (scancel's exit code and
    error) and cancel_local (waits for the controller and every process under it);
    cancel_jobs raises WorkFailed naming each job not cancelled
    -> test_cancel_says_which_local_job_keeps_running (a real controller-like process
    that ignores SIGINT/SIGTERM), test_cancel_says_when_scancel_fails (the real scancel
    binary on an unknown id; without a cluster it fails on the missing configuration)
 26 (part). `mlflow sync` of a cut spill file -> tracking.spill.read_spill (whole records
    up to the cut), keep_partial (kept as <name>.partial); sync says it in one line
    -> test_sync_of_a_truncated_spill_file_syncs_what_is_whole
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hpt_hpc.tracking.server import free_port
from usererror import assert_user_error, clear_tracking_env, run


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    clear_tracking_env(monkeypatch)


def cli_process(out: Path, *args, env=None) -> subprocess.Popen:
    """``hpt-hpc ARGS`` as a subprocess (this interpreter, this checkout's package), its
    output in the file ``out``."""
    with open(out, "w") as sink:
        return subprocess.Popen([sys.executable, "-m", "hpt_hpc.cli.main", *map(str, args)],
                                stdout=sink, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def marked(mark: str):
    """Live processes (zombies aside) whose environment carries ``mark``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and \
                    proc.environ().get("HPT_TEST_MARK") == mark:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(condition, seconds: float, what: str):
    deadline = time.time() + seconds
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _server_spawned(mark: str):
    return [p for p in marked(mark) if "--backend-store-uri" in p.cmdline()]


@pytest.mark.parametrize("sig, moment", [
    (signal.SIGTERM, "at once"), (signal.SIGTERM, "server spawned"),
    (signal.SIGINT, "server spawned"), (signal.SIGTERM, "ready")])
def test_serve_stops_its_group(tmp_path, sig, moment):
    mark, port = secrets.token_hex(8), free_port()
    out = tmp_path / "serve.out"
    serve = cli_process(out, "mlflow", "serve", "--store", tmp_path / "store", "--port", port,
                        env={"HPT_TEST_MARK": mark})
    try:
        if moment == "server spawned":
            wait_for(lambda: _server_spawned(mark), 120, "the mlflow server process")
        elif moment == "ready":
            wait_for(lambda: serve.poll() is not None or "ready" in out.read_text(), 180,
                     "serve ready")
            assert serve.poll() is None, out.read_text()
        serve.send_signal(sig)
        serve.wait(timeout=60)
    finally:
        if serve.poll() is None:
            serve.kill()
    output = out.read_text()
    assert "Traceback" not in output, output
    left = marked(mark)
    for proc in left:  # leave nothing behind for the next test
        proc.kill()
    assert not left, [p.cmdline() for p in left]
    assert port_free(port)


def _serve_until_ready(tmp_path: Path, name: str, *args, env=None):
    """``mlflow serve ARGS`` as a subprocess, returned once it said it is ready (or ended);
    its output is in ``tmp_path/<name>``."""
    out = tmp_path / name
    serve = cli_process(out, "mlflow", "serve", *args, env=env)
    wait_for(lambda: serve.poll() is not None or "MLflow server ready" in out.read_text(),
             180, f"serve {args} ready")
    return serve, out


def _stop(serve: subprocess.Popen) -> None:
    if serve.poll() is None:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)


def test_serve_auth_takes_a_changed_password(tmp_path):
    """Restarted on the same store with another MLFLOW_TRACKING_PASSWORD, ``serve --auth``
    makes it the admin's password (one line, without it): the new one answers 200, the old
    one 401; neither is written to a file or printed."""
    import requests
    old, new = "Old-" + secrets.token_hex(8), "New-" + secrets.token_hex(8)
    store, port = tmp_path / "store", free_port()
    args = ("--store", store, "--port", port, "--auth")
    user = {"MLFLOW_TRACKING_USERNAME": "researcher"}
    first, out1 = _serve_until_ready(tmp_path, "first.out", *args,
                                     env={**user, "MLFLOW_TRACKING_PASSWORD": old})
    _stop(first)
    assert first.returncode == 0, out1.read_text()
    second, out2 = _serve_until_ready(tmp_path, "second.out", *args,
                                      env={**user, "MLFLOW_TRACKING_PASSWORD": new})
    try:
        output = out2.read_text()
        assert second.poll() is None, output
        assert "admin password of 'researcher' updated" in output, output
        api = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search"
        answer = {pw: requests.get(api, params={"max_results": 1}, auth=("researcher", pw),
                                   timeout=10).status_code for pw in (old, new)}
        assert answer == {old: 401, new: 200}
    finally:
        _stop(second)
    for path in [p for p in tmp_path.rglob("*") if p.is_file()]:
        data = path.read_bytes()
        assert old.encode() not in data and new.encode() not in data, path


@pytest.mark.parametrize("args", [
    ("report", "--name", "x", "--out", "{tmp}/report", "--tracking-uri", "{uri}"),
    ("runs", "--tracking-uri", "{uri}"),
    ("mlflow", "init", "--tracking-uri", "{uri}"),
])
def test_credentials_in_a_tracking_uri_are_refused_everywhere(tmp_path, args):
    uri = f"http://bob:hunter2@127.0.0.1:{free_port()}/"
    result = run(*(a.format(tmp=tmp_path, uri=uri) for a in args))
    line = assert_user_error(result, "MLFLOW_TRACKING_USERNAME")
    assert "hunter2" not in result.output and "bob" not in line
    assert list(tmp_path.iterdir()) == []


def test_a_train_refused_by_the_stage_lock_touches_nothing_shared(tmp_path, mnist_tree):
    """The pipeline run stays as the finished run left it, ``launches/`` and the pipeline
    record are unchanged: the lock is taken before any of them."""
    import fcntl

    from mlflow import MlflowClient

    from tiny import write_tiny_config
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                            {"target": {"dataset": "mnist", "variant": "scratch",
                                        "iterations": 2}},
                            tracking={"enabled": True, "system_metrics": False})
    out = tmp_path / "out"
    assert run("train", "--config", cfg).exit_code == 0
    shared = {p: p.read_bytes() for p in [*(out / "launches").iterdir(),
                                          out / "mlflow-pipeline.json"]}
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    pipeline = json.loads((out / "mlflow-pipeline.json").read_text())["run_id"]
    assert client.get_run(pipeline).info.status == "FINISHED"
    with open(out / "target" / "stage.lock", "w") as holder:
        holder.write("host login1, pid 4242")
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_user_error(run("train", "--config", cfg),
                          "stage 'target' is already running (host login1, pid 4242)")
    assert client.get_run(pipeline).info.status == "FINISHED"
    assert sorted((out / "launches").iterdir()) == sorted(p for p in shared
                                                          if p.parent.name == "launches")
    assert all(path.read_bytes() == data for path, data in shared.items())


def _record(tmp_path: Path, executor: str, job_id: str) -> Path:
    """A launch record of one ``target`` job (as `launch` writes it)."""
    from hpt_hpc.launch.record import JobEntry, LaunchRecord
    record = LaunchRecord.new(tmp_path / "out", executor, str(tmp_path / "config.yaml"),
                              ["target"], str(tmp_path / "logs"))
    record.jobs.append(JobEntry(stage="target", job_id=job_id,
                                output_dir=str(tmp_path / "out")))
    return record.save()


def test_cancel_says_which_local_job_keeps_running(tmp_path):
    """A local job whose controller ignores SIGINT/SIGTERM: `cancel` waits a little, then
    names the job and its pid and exits non-zero instead of printing "cancelled"."""
    from hpt_hpc.launch.submitit_private import LOCAL_CONTROLLER
    (tmp_path / "logs").mkdir()
    ready = tmp_path / "ignoring"
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import pathlib, signal, sys, time\n"
         "for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_IGN)\n"
         "pathlib.Path(sys.argv[3]).touch()\n"
         "time.sleep(120)", LOCAL_CONTROLLER, str(tmp_path / "logs"), str(ready)])
    try:
        wait_for(ready.exists, 30, "the job's controller ignoring signals")
        result = run("cancel", _record(tmp_path, "local", str(stubborn.pid)))
        assert stubborn.poll() is None
    finally:
        stubborn.kill()
        stubborn.wait()
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert not any(ln.startswith("cancelled:") for ln in result.output.splitlines())
    lines = [ln for ln in result.output.splitlines() if ln.startswith("failed:")]
    assert len(lines) == 1, result.output
    assert f"job {stubborn.pid} still running" in lines[0] and f"pid {stubborn.pid}" in lines[0]


def test_cancel_says_when_scancel_fails(tmp_path, monkeypatch):
    """The real scancel with no controller to ask: its error, not "cancelled" (a job id
    the running cluster does not know: tests/slurm/test_launch.py)."""
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "no-such-slurm.conf"))
    result = run("cancel", _record(tmp_path, "slurm", "999999999"))
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert not any(ln.startswith("cancelled:") for ln in result.output.splitlines())
    lines = [ln for ln in result.output.splitlines() if ln.startswith("failed:")]
    assert len(lines) == 1 and "job 999999999 not cancelled (scancel" in lines[0], \
        result.output


def test_sync_of_a_truncated_spill_file_syncs_what_is_whole(tmp_path, monkeypatch):
    """A spill file cut in the middle of its metric values: `mlflow sync` sends the whole
    rows before the cut, keeps the file (renamed, unchanged) and says so in one line."""
    from mlflow import MlflowClient

    from hpt_hpc.tracking.mlflow_tracker import MlflowTracker
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert run("mlflow", "init", "--tracking-uri", uri).exit_code == 0
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("spill")).info.run_id
    dead = MlflowClient(f"http://127.0.0.1:{free_port()}")  # an outage: nothing arrives
    tracker = MlflowTracker(dead, run_id, tracking_uri=uri, spill_dir=tmp_path / "stage",
                            flush_seconds=60, system_metrics=False)
    for step in range(1, 41):
        tracker.log_metrics({"loss": step / 8}, step)
    tracker.set_tags({"hpt.note": "after the metrics"})
    tracker.close("FINISHED", timeout=0.5)
    spill = tmp_path / "stage" / f"mlflow-pending-{run_id}.json"
    text = spill.read_text()
    cut = text.index('"loss", 2.625')  # inside the row of step 21
    spill.write_text(text[:cut + 9])
    before = spill.read_bytes()
    result = run("mlflow", "sync", tmp_path / "stage")
    line = assert_user_error(result, str(spill))
    assert "20 metric values and 0 operations" in line and "kept as" in line
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, 21))
    kept = [p for p in (tmp_path / "stage").iterdir()]
    assert len(kept) == 1 and kept[0].read_bytes() == before and kept[0].name in line
    assert run("mlflow", "sync", tmp_path / "stage").exit_code == 0  # nothing sent twice
    assert len(client.get_metric_history(run_id, "loss")) == 20
