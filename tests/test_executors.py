"""Executors behind one interface (hpt_hpc/launch/executors.py): ``probe``, ``finetune``
and ``embed`` take ``--executor`` like ``launch``; a local job gives what the in-process
run gives, and its launch record answers ``status``."""
import json

import numpy as np
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.launch.executors import EXECUTORS, executor_named
from hpt_hpc.launch.record import LaunchRecord, job_states
from tiny import write_tiny_config


def _invoke(*args, code: int = 0) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def _job_result(out):
    """The newest launch: one local job, FINISHED; its result, read back through the
    record (another process's view)."""
    record = LaunchRecord.load(out)
    assert record.executor == "local" and len(record.jobs) == 1
    assert [r["state"] for r in job_states(record)] == ["FINISHED"]
    return record.job(record.jobs[0]).result()


def test_probe_finetune_and_embed_run_as_local_jobs(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    _invoke("train", "--config", config)
    out = tmp_path / "out"
    knn = ["--config", config, "--dataset", "mnist", "--checkpoint", "stage:target",
           "--mode", "knn", "--set", "probe.knn_k=5"]
    launches = sorted((out / "launches").iterdir())  # train's
    here = _invoke("probe", *knn).strip().splitlines()[-1]
    assert sorted((out / "launches").iterdir()) == launches  # in-process: none, as before
    [written] = (out / "evaluations").glob("*.json")
    score = json.loads(written.read_text())["score"]
    local = _invoke("probe", *knn, "--executor", "local").strip().splitlines()[-1]
    assert local == here and local.startswith("mnist: kNN")
    assert _job_result(out)["score"] == score


    tune = ["--config", config, "--dataset", "mnist", "--checkpoint", "stage:target",
            "--labels", "10", "--iterations", "2", "--set", "finetune.batch_size=10",
            "--set", "finetune.eval_every=2"]
    _invoke("finetune", *tune)
    [written] = (out / "evaluations").glob("finetune*.json")
    first = json.loads(written.read_text())
    line = _invoke("finetune", *tune, "--executor", "local").strip().splitlines()[-1]
    job = _job_result(out)
    assert job["score"] == first["score"] and job["protocol"] == "finetune"
    assert line.startswith("mnist: fine-tune") and f"{100 * job['score']:.2f} %" in line

    embed = ["--config", config, "--dataset", "mnist", "--split", "val", "--checkpoint",
             "stage:target"]
    _invoke("embed", *embed, "--out", tmp_path / "here")
    said = _invoke("embed", *embed, "--out", tmp_path / "job", "--executor", "local")
    assert said.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'job.npy'} (")
    assert np.array_equal(np.load(tmp_path / "here.npy"), np.load(tmp_path / "job.npy"))
    assert _job_result(out)["rows"] == len(np.load(tmp_path / "job.npy"))


def test_bad_input_is_refused_before_any_local_job(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    said = _invoke("probe", "--config", config, "--dataset", "mnist", "--checkpoint",
                   tmp_path / "absent.pt", "--executor", "local", code=2)
    assert said.startswith("error: ") and "absent.pt" in said
    assert not (tmp_path / "out").exists()  # refused before any job
    said = _invoke("embed", "--config", config, "--dataset", "nope", "--out",
                   tmp_path / "e", "--executor", "local", code=2)
    assert said.startswith("error: dataset 'nope' is not defined")
    assert not (tmp_path / "out" / "launches").exists()


def test_every_executor_is_a_row_of_the_table():
    assert set(EXECUTORS) == {"slurm", "local", "debug"}
    for name, cls in EXECUTORS.items():
        executor = executor_named(name)
        assert isinstance(executor, cls) and executor.name == name
    assert executor_named("debug").in_process and not executor_named("local").in_process
    assert executor_named("slurm").detached(wait=True)
    assert not executor_named("local").detached(wait=True)
    assert executor_named("local").detached(wait=False)
