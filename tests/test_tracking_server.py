"""A real, lean MLflow server on 127.0.0.1: a stage chain logged through it and checked in
the UI with headless Chromium (Playwright), and a transient outage (the server stopped
mid-training and restarted) that loses nothing."""
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow import MlflowClient

from hpt_hpc.cli.main import cli
from hpt_hpc.tracking import end_pipeline_run, open_run, start_pipeline_run
from hpt_hpc.tracking.server import free_port, start_server
from hpt_hpc.train import build_stage_loader, open_stage_tracker, run_stage

from tiny import run_stage_of, stage_plan_of, tiny_config

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("HPT_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts"))


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HPT_MLFLOW_PARENT_RUN_ID", raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``{"handle": ServerHandle, "store": folder}``; restartable on the same port."""
    store = tmp_path_factory.mktemp("server")
    holder = {"store": store, "handle": start_server(store, "127.0.0.1", free_port())}
    yield holder
    holder["handle"].stop()


def restart(holder) -> None:
    port = int(holder["handle"].uri.rsplit(":", 1)[1])
    holder["handle"] = start_server(holder["store"], "127.0.0.1", port)


def _config(out, mnist, uri, experiment, stages, flush=0.5):
    return tiny_config(out, {"mnist": mnist}, stages,
                       tracking={"uri": uri, "experiment": experiment, "flush_seconds": flush})


def test_chain_through_server_shown_in_ui(server, tmp_path, mnist_tree):
    uri = server["handle"].uri
    stages = {"base": {"dataset": "mnist", "variant": "full", "iterations": 6},
              "target": {"dataset": "mnist", "variant": "full",
                         "init": "models:/ui@ui-chain-base", "iterations": 6}}
    cfg = _config(tmp_path / "out", mnist_tree, uri, "ui", stages)
    parent = start_pipeline_run(uri, "ui", "ui-chain", cfg.output_dir)
    results = {s: run_stage_of(cfg, s, parent_run_id=parent, pipeline="ui-chain")
               for s in stages}
    end_pipeline_run(uri, parent)
    client = MlflowClient(uri)
    target = client.get_run(results["target"].run_id)
    assert target.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied artifacts
    assert target.data.tags["hpt.init_run_id"] == results["base"].run_id
    assert target.data.tags["hpt.init_model_version"] == "1"

    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: run tests/ui/install.sh")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install '.[test]'")
    exp_id = client.get_experiment_by_name("ui").experiment_id
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.goto(f"{uri}/#/experiments/{exp_id}/runs")  # classic runs view (tagged)
            pipeline_cell = page.locator("[role=gridcell][col-id='attributes.`Run Name`']",
                                         has=page.get_by_text("ui-chain", exact=True)).first
            pipeline_cell.wait_for(timeout=60_000)
            assistant = page.get_by_role("button", name="Close")
            if assistant.count():
                assistant.first.click()  # the assistant side panel narrows the charts
            pipeline_cell.locator("button").first.click()  # expand the nested stage runs
            for stage in stages:
                page.get_by_role("link", name=stage, exact=True).wait_for(timeout=20_000)
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-runs.png"))
            page.goto(f"{uri}/#/experiments/{exp_id}/runs?compareRunsMode=CHART")
            for stage in stages:
                page.get_by_text(f"{stage} (loss)").first.wait_for(timeout=60_000)
            page.locator("svg.main-svg").first.wait_for(timeout=30_000)  # plotted charts
            page.screenshot(path=str(ARTIFACTS / "mlflow-ui-loss-chart.png"))
        finally:
            browser.close()
    assert (ARTIFACTS / "mlflow-ui-loss-chart.png").stat().st_size > 10_000


def test_outage_during_training_loses_nothing(server, tmp_path, mnist_tree):
    """Stop the server at step 5 of 30: training finishes, metrics and the checkpoint wait in
    the tracker, which delivers them once the server is back; a run that closes during the
    outage spills to a file that ``hpt-hpc mlflow sync`` delivers later."""
    uri = server["handle"].uri
    stages = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 30}}
    cfg = _config(tmp_path / "out", mnist_tree, uri, "outage", stages, flush=0.2)
    plan = stage_plan_of(cfg, "target")
    tracker = open_stage_tracker(plan)
    side = open_run(uri, "outage", "side", "eval", folder=cfg.output_dir,
                    flush_seconds=0.2, system_metrics=False)

    def on_step(step, loss):
        if step == 5:
            server["handle"].stop()
        time.sleep(0.02)  # let the background flusher try (and fail) a few times

    result = run_stage(plan, build_stage_loader(plan), tracker=tracker, on_step=on_step)
    assert result.completed and result.checkpoint.is_file()  # the job survived
    assert tracker.failures > 0 and tracker.summary()["pending"] > 0

    side.log_metrics({"x": 1.0}, 1)
    side.close(timeout=0.5)
    spill = Path(cfg.output_dir) / f"mlflow-pending-{side.run_id}.json"
    assert spill.is_file()

    back = threading.Thread(target=restart, args=(server,))
    back.start()  # the server returns while the stage's tracker keeps retrying
    tracker.close("FINISHED", timeout=120)
    back.join()
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and tracker.summary()["pending"] == 0
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, 31))
    assert run.data.tags["hpt.model.final"] == "models:/outage@tiny-target"  # <pipeline>-<stage>
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == \
        ["checkpoints/final.pt"]

    out = CliRunner().invoke(cli, ["mlflow", "sync", cfg.output_dir])
    assert out.exit_code == 0, out.output
    assert not spill.exists()
    side_run = client.get_run(side.run_id)
    assert side_run.info.status == "FINISHED" and side_run.data.metrics["x"] == 1.0


def test_server_command_is_lean(tmp_path):
    """One worker; on 0.0.0.0 the login node's names are allowed as Host headers."""
    from hpt_hpc.tracking.server import server_command
    cmd = server_command(tmp_path, "127.0.0.1", 5123)
    assert cmd[cmd.index("--workers") + 1] == "1" and "--allowed-hosts" not in cmd
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path / 'mlflow.db'}"
    wide = server_command(tmp_path, "0.0.0.0", 5123)
    assert f"{socket.gethostname()}:5123" in wide[wide.index("--allowed-hosts") + 1].split(",")


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_the_ui_answers_through_an_ssh_tunnel(server, tmp_path, host):
    """`ssh -L 15000:localhost:5000 login` (docs/tracking.md): the browser sends
    `Host: localhost:15000`, the request arrives on the login node's loopback. Served on
    127.0.0.1 or on 0.0.0.0 (for compute nodes) alike; other names are still refused."""
    import requests
    handle = server["handle"] if host == "127.0.0.1" else start_server(tmp_path, host, 0)
    port = handle.uri.rsplit(":", 1)[1]
    try:
        tunnel = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "localhost:15000"},
                              timeout=10)
        assert tunnel.status_code == 200 and "<html" in tunnel.text.lower()
        other = requests.get(f"http://127.0.0.1:{port}/", headers={"Host": "evil.example"},
                             timeout=10)
        assert other.status_code in (400, 403)
    finally:
        if handle is not server["handle"]:
            handle.stop()


def test_auth_server_keeps_the_password_out_of_every_file(tmp_path, mnist_tree, monkeypatch):
    """``serve --auth`` refuses anonymous requests; a run logged with the credentials in
    the environment writes the password nowhere (outputs, store, server log, output)."""
    import secrets

    import requests
    from tiny import write_tiny_config
    password = "Pw-" + secrets.token_hex(8)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "researcher")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    handle = start_server(tmp_path / "store", "127.0.0.1", 0, auth=True)
    try:
        anonymous = requests.get(f"{handle.uri}/api/2.0/mlflow/experiments/search",
                                 params={"max_results": 1}, timeout=10)
        assert anonymous.status_code == 401
        cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                                {"target": {"dataset": "mnist", "iterations": 2}},
                                tracking={"enabled": True, "uri": handle.uri,
                                          "experiment": "secret", "flush_seconds": 0.5})
        result = CliRunner().invoke(cli, ["train", "--config", str(cfg)])
        assert result.exit_code == 0, result.output
        assert "registered as models:/secret@tiny-target" in result.output
    finally:
        handle.stop()
    assert password not in result.output
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "final.pt" for p in written) and any(p.suffix == ".log" for p in written)
    leaks = [p for p in written if password.encode() in p.read_bytes()]
    assert not leaks, leaks


def test_concurrent_writers_against_one_server(monkeypatch):
    """The load benchmark at test size (benchmarks/tracking_load.py runs 64)."""
    import importlib
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # the writers import it by name
    result = importlib.import_module("tracking_load").run_load(writers=16, points=50)
    assert result["errors"] == 0 and result["pending_after_close"] == 0, result
    assert result["runs"] == result["runs_finished"] == result["runs_with_every_point"] == 16
    assert result["model_versions"] == 16
