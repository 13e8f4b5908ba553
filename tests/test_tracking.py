"""MLflow tracking on the embedded sqlite store (real store, real stages, no mocks):
URIs and server rules, a stage chain through the registry, requeue continuity, buffering,
8 concurrent writers, fail-fast on an unreachable server, bad init aliases."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from hpt_hpc.config import ConfigError
from hpt_hpc.errors import HptError
from hpt_hpc.tracking import (MAX_SQLITE_WRITERS, MlflowTracker, TrackingError,
                              filesystem_type, open_run, prepare_store, requires_server,
                              start_pipeline_run)
from hpt_hpc.tracking.server import free_port

from tiny import stage_plan_of, tiny_config

REPO = Path(__file__).resolve().parents[1]
CHAIN = {"base": {"dataset": "mnist", "variant": "full", "iterations": 4},
         "target": {"dataset": "mnist", "variant": "full", "init": "models:/tiny@tiny-base",
                    "iterations": 4}}


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HPT_MLFLOW_PARENT_RUN_ID", raising=False)


def run_configured_stage(*args, **kwargs):
    # Imported on use: forkserver children import this module and need no torch.
    from tiny import run_stage_of
    return run_stage_of(*args, **kwargs)


def resolve_tracking_uri(cfg):
    from hpt_hpc.tracking import resolve_uri
    return resolve_uri(cfg.tracking.uri, cfg.output_dir)


def stage_tracker(cfg, stage, rank=0, **kwargs):
    from hpt_hpc.train import open_stage_tracker
    return open_stage_tracker(stage_plan_of(cfg, stage, **kwargs), rank)


def pipeline_run(cfg, name):
    return start_pipeline_run(resolve_tracking_uri(cfg), cfg.tracking.experiment or cfg.name,
                              name, cfg.output_dir)


def invoke(*args):
    from click.testing import CliRunner
    from hpt_hpc.cli.main import cli
    return CliRunner().invoke(cli, list(args))


def tracked_config(out, mnist, stages, **tracking):
    return tiny_config(out, {"mnist": mnist}, stages,
                       tracking={"experiment": "tiny", "flush_seconds": 0.5, **tracking})


def client_of(cfg):
    uri = resolve_tracking_uri(cfg)
    return MlflowClient(uri, uri)


def test_uri_resolution_and_server_rules(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path / "out", {}, {}, tracking={"enabled": True})
    assert resolve_tracking_uri(cfg) == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    rel = tiny_config("out", {}, {}, tracking={"uri": "sqlite:///rel/x.db"})
    assert resolve_tracking_uri(rel) == f"sqlite:///{tmp_path / 'rel' / 'x.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_tracking_uri(rel) == "http://127.0.0.1:5999"  # the environment wins
    with pytest.raises(ConfigError, match="plain path"):
        tiny_config("out", {}, {}, tracking={"uri": "/some/folder"})

    db = "sqlite:////scratch/x/mlflow.db"
    assert requires_server("http://login1:5000", 64) is None
    assert requires_server(db, 1, "nfs4") is None
    assert "network filesystem (lustre)" in requires_server(db, 2, "lustre")
    assert requires_server(db, MAX_SQLITE_WRITERS, "ext4") is None
    assert "exceed" in requires_server(db, MAX_SQLITE_WRITERS + 1, "ext4")
    assert "2 nodes" in requires_server(db, 4, "ext4", nodes=2)
    assert filesystem_type(tmp_path / "not" / "yet") not in ("", "unknown")
    with pytest.raises(TrackingError, match="hpt-hpc mlflow serve"):
        prepare_store(resolve_tracking_uri(cfg), num_tasks=MAX_SQLITE_WRITERS + 1)


def test_schema_created_once_by_concurrent_processes(tmp_path):
    """Four processes race to create one new store; the file lock lets exactly one do it."""
    uri = f"sqlite:///{tmp_path / 'race' / 'mlflow.db'}"
    code = ("import sys; from hpt_hpc.tracking import ensure_store; "
            "print('created' if ensure_store(sys.argv[1]) else 'found')")
    procs = [subprocess.Popen([sys.executable, "-c", code, uri], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    said = [p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, said
    assert sorted(out.strip() for out, _ in said) == ["created", "found", "found", "found"]
    assert MlflowClient(uri).search_experiments()  # a valid store with its default experiment


@pytest.fixture(scope="module")
def chain(tmp_path_factory, mnist_tree):
    """base -> target (init models:/tiny@tiny-base) under one pipeline run, plus a probe."""
    import dataclasses
    from hpt_hpc.eval.execute import cli_plan, run_eval_plan
    from hpt_hpc.plan import tracking_target
    cfg = tracked_config(tmp_path_factory.mktemp("chain") / "out", mnist_tree, CHAIN)
    parent = pipeline_run(cfg, "tiny")
    results = {s: run_configured_stage(cfg, s, parent_run_id=parent) for s in ("base", "target")}
    plan = dataclasses.replace(cli_plan(cfg, "linear", "mnist",
                                        str(results["target"].checkpoint)),
                               label="probe target", method="HPT",
                               tracking=tracking_target(cfg, parent_run_id=parent))
    record, _ = run_eval_plan(plan)
    return cfg, parent, results, record.run_id, record


def test_chain_is_nested_tagged_and_registered(chain):
    cfg, parent, results, eval_id, probe = chain
    client = client_of(cfg)
    exp = client.get_experiment_by_name("tiny")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert exp.artifact_location.startswith(str(Path(cfg.output_dir) / "mlartifacts"))
    base, target = (client.get_run(results[s].run_id) for s in ("base", "target"))
    for stage, run, method in (("base", base, "MoCo-v2 base"), ("target", target, "HPT")):
        tags = run.data.tags
        assert tags["mlflow.parentRunId"] == parent and run.info.status == "FINISHED"
        assert (tags["hpt.pipeline"], tags["hpt.stage"], tags["hpt.method"],
                tags["hpt.dataset"]) == ("tiny", stage, method, "mnist")
        assert len(tags["hpt.git_commit"]) == 40
        assert run.data.params["optim.lr"] == "0.05" and "tracking.uri" in run.data.params
        assert {"system/cpu_utilization_percentage", "system/disk_usage_percentage",
                "system/process_memory_rss_megabytes"} <= set(run.data.metrics)  # MLflow's + ours
        files = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.resolved.yaml", "checkpoints"} <= files
        assert tags["hpt.model.final"] == f"models:/tiny@tiny-{stage}"
    losses = client.get_metric_history(base.info.run_id, "loss")
    assert sorted(m.step for m in losses) == [1, 2, 3, 4]
    # Lineage: target started from the registered base checkpoint, recorded as tags.
    assert target.data.tags["hpt.init_source"] == "models:/tiny@tiny-base"
    assert target.data.tags["hpt.init_run_id"] == base.info.run_id
    model = client.get_registered_model("tiny")
    assert set(model.aliases) == {"tiny-base", "tiny-target"}
    version = client.get_model_version_by_alias("tiny", "tiny-base")
    assert version.run_id == base.info.run_id
    assert version.source == f"runs:/{base.info.run_id}/checkpoints/final.pt"
    # The evaluation is a nested run with the probe's scores and curve.
    ev = client.get_run(eval_id)
    assert ev.data.tags["mlflow.parentRunId"] == parent and ev.data.tags["hpt.kind"] == "eval"
    assert ev.data.metrics["score"] == pytest.approx(probe.score)
    assert len(client.get_metric_history(eval_id, "curve_val")) == len(probe.curve)


def test_runs_table_and_other_init_forms(chain, tmp_path):
    cfg, parent, results, _, probe = chain
    out = invoke("runs", "--output-dir", cfg.output_dir)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "method" in lines[1] and " test " in lines[1] and " val " in lines[1]
    target_line = next(line for line in lines if line.startswith("target"))
    assert "models:/tiny@tiny-base <- base" in target_line and "FINISHED" in target_line
    probe_line = next(line for line in lines if line.startswith("probe target"))
    assert f"{100 * probe.score:.1f}%" in probe_line

    base_id = results["base"].run_id
    from hpt_hpc.config import InitRef, StageLayout
    from hpt_hpc.models.resolve import resolve

    def resolve_init_source(text):
        layout = StageLayout(Path(cfg.output_dir), "target")
        resolved = resolve(InitRef.parse(text), layout, resolve_tracking_uri(cfg))
        return resolved.path, resolved.tags
    path, tags = resolve_init_source(f"runs:/{base_id}/checkpoints/final.pt")
    assert Path(path).is_file() and tags["hpt.init_run_id"] == base_id
    path, tags = resolve_init_source("stage:base")
    assert tags == {"hpt.init_source": "stage:base"}
    with pytest.raises(HptError) as err:
        resolve_init_source("models:/tiny@nope")
    assert "registered model 'tiny' has no alias 'nope'" in str(err.value)
    assert "tiny-base (v1)" in str(err.value) and "tiny-target (v2)" in str(err.value)
    with pytest.raises(HptError, match="no registered model 'ghost'.*tiny"):
        resolve_init_source("models:/ghost@x")
    # The CLI shows the same error as one line.
    bad = invoke("probe", "--config", _write_yaml(cfg, tmp_path), "--dataset", "mnist",
                 "--checkpoint", "models:/tiny@nope")
    assert bad.exit_code == 2 and "has no alias 'nope'" in bad.output


def _write_yaml(cfg, tmp_path):
    import yaml
    from hpt_hpc.config import config_to_dict
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return str(path)


def test_requeued_stage_continues_its_run(tmp_path, mnist_tree):
    stages = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 8}}
    cfg = tracked_config(tmp_path / "out", mnist_tree, stages)
    first = run_configured_stage(cfg, "target", stop_after=3)  # "preempted" after step 3
    client = client_of(cfg)
    assert client.get_run(first.run_id).info.status == "KILLED"
    rest = run_configured_stage(cfg, "target")  # the requeued job
    assert rest.run_id == first.run_id and rest.resumed_from == 3
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert len(runs) == 1  # no duplicate run
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["hpt.resumes"] == "1"
    assert run.data.tags["hpt.resumed_from_step"] == "3"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
    assert sorted(steps) == list(range(1, 9))  # continued from the saved step
    with pytest.raises(TrackingError, match="pipeline run 0+ .* is not in"):
        stage_tracker(cfg, "target", parent_run_id="0" * 32)


def test_metrics_are_buffered_and_sent_in_batches(tmp_path):
    cfg = tiny_config(tmp_path / "out", {}, {}, tracking={"flush_seconds": 3600})
    tracker = open_run(resolve_tracking_uri(cfg), cfg.name, "buffer", "eval",
                       flush_seconds=cfg.tracking.flush_seconds, system_metrics=False)
    batches = []
    for batch in range(50):  # CPU time of this thread (immune to a busy machine), median
        started = time.thread_time()
        for step in range(batch * 100, batch * 100 + 100):
            tracker.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1}, step)
        batches.append((time.thread_time() - started) / 100)
    per_call = sorted(batches)[len(batches) // 2]
    client = client_of(cfg)
    assert client.get_metric_history(tracker.run_id, "loss") == []  # still buffered
    assert per_call < 50e-6, f"{per_call * 1e6:.1f} us per log_metrics call"
    tracker.close()
    assert len(client.get_metric_history(tracker.run_id, "loss")) == 5000
    assert tracker.summary()["failures"] == 0


def _array_task(cfg_data, task, folder, env, barrier, results):
    """One array task (a forkserver child: MLflow is imported once, not 8 times)."""
    import traceback
    os.environ.update(env)
    try:
        from hpt_hpc.config import config_from_dict
        cfg = config_from_dict(cfg_data)
        barrier.wait(timeout=120)  # all eight write at the same time
        tracker = stage_tracker(cfg, "target", label=f"task-{task}", method="HPT")
        tracker.log_params({"task": task, "lr": 0.01 * task})
        for step in range(1, 301):
            tracker.log_metrics({"loss": 1.0 / step, "lr": 0.1, "acc": 0.5}, step)
            if step % 100 == 0:
                time.sleep(0.05)  # let the background flusher interleave with the others
        ckpt = Path(folder) / f"ckpt-{task}.pt"
        ckpt.write_bytes(bytes(1000))
        tracker.log_checkpoint(str(ckpt))
        tracker.close()
        results.put(tracker.summary())
    except BaseException:
        results.put({"error": traceback.format_exc()})


def test_eight_concurrent_writers(tmp_path):
    """8 array tasks (processes) log into one sqlite store at once: zero errors, nothing
    lost, each tagged with its SLURM array ids, each checkpoint registered."""
    import multiprocessing
    from hpt_hpc.config import config_to_dict
    cfg = tiny_config(tmp_path / "out", {"mnist": tmp_path}, {
        "target": {"dataset": "mnist", "variant": "scratch"}},
        tracking={"experiment": "array", "flush_seconds": 0.2})
    prepare_store(resolve_tracking_uri(cfg), num_tasks=8)  # the launcher's pre-flight
    parent = pipeline_run(cfg, "array")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["pytest", "hpt_hpc.tracking.runs", "hpt_hpc.tracking.server",
                                "hpt_hpc.tracking.mlflow_tracker",
                                "mlflow.store.tracking.sqlalchemy_store"])
    barrier, results = ctx.Barrier(8), ctx.Queue()
    env = {"HPT_MLFLOW_PARENT_RUN_ID": parent, "SLURM_ARRAY_JOB_ID": "4242"}
    procs = [ctx.Process(target=_array_task, args=(
        config_to_dict(cfg), i, str(tmp_path), {**env, "SLURM_ARRAY_TASK_ID": str(i)},
        barrier, results)) for i in range(8)]
    for proc in procs:
        proc.start()
    summaries = [results.get(timeout=180) for _ in procs]
    for proc in procs:
        proc.join(60)
    assert all("error" not in s for s in summaries), [s.get("error") for s in summaries]
    assert all(s["failures"] == 0 and s["dropped"] == 0 and s["pending"] == 0
               for s in summaries), summaries
    client = client_of(cfg)
    runs = client.search_runs([client.get_experiment_by_name("array").experiment_id],
                              f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.data.tags["slurm.array_task_id"] for r in runs) == [str(i) for i in range(8)]
    assert all(r.data.tags["slurm.array_job_id"] == "4242" for r in runs)
    assert all(len(client.get_metric_history(r.info.run_id, "loss")) == 300 for r in runs)
    assert len(client.get_registered_model("array").aliases) == 8


def test_unreachable_server_fails_fast(tmp_path, mnist_tree):
    dead = f"http://127.0.0.1:{free_port()}"
    cfg = tracked_config(tmp_path / "out", mnist_tree, CHAIN, uri=dead)
    started = time.time()
    with pytest.raises(TrackingError, match="not reachable"):
        stage_tracker(cfg, "base")
    assert time.time() - started < 10
    out = invoke("train", "--config", _write_yaml(cfg, tmp_path), "--stage", "base")
    assert out.exit_code == 2 and "is not reachable" in out.output
    assert not (tmp_path / "out" / "base" / "checkpoints").exists()  # failed before training


def test_tracker_interface_without_store(tmp_path):
    """Disabled tracking and non-zero ranks get a NullTracker; no store is created."""
    cfg = tiny_config(tmp_path / "out", {}, {}, tracking={"enabled": False})
    stages = {"target": {"dataset": "m"}}
    cfg = tiny_config(tmp_path / "out", {"m": tmp_path}, stages, tracking={"enabled": False})
    assert stage_tracker(cfg, "target").run_id is None
    cfg = tiny_config(tmp_path / "out", {"m": tmp_path}, stages, tracking={"enabled": True})
    assert stage_tracker(cfg, "target", rank=1).run_id is None
    assert not (tmp_path / "out" / "mlflow.db").exists()
    out = invoke("runs", "--output-dir", str(tmp_path / "out"))
    assert out.exit_code == 2 and "error: no MLflow store at" in out.output
    assert not (tmp_path / "out" / "mlflow.db").exists()
    assert isinstance(MlflowTracker, type)


def test_a_local_store_holds_each_checkpoint_once(chain):
    """The registered artifact and the next stage's init cache are the stage's final.pt
    itself (hard links), not copies."""
    cfg, _, results = chain[:3]
    out = Path(cfg.output_dir)
    finals = {s: out / s / "checkpoints" / "final.pt" for s in ("base", "target")}
    for stage, final in finals.items():
        [artifact] = out.glob(f"mlartifacts/*/{results[stage].run_id}/artifacts/"
                              f"checkpoints/final.pt")
        assert os.path.samefile(artifact, final), stage
        assert os.path.samefile(out / stage / "checkpoints" / "last.pt", final)
    cached = [p for p in (out / "target").rglob("init-cache/**/*.pt") if p.is_file()]
    assert cached and all(os.path.samefile(p, finals["base"]) for p in cached)
