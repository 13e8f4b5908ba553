"""`hpt-hpc probe`/`finetune`/`embed --executor slurm` against the real dev cluster: one
job each, returning at once, with the result the in-process run gives (#27)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.eval.record import EvalRecord
from hpt_hpc.launch.record import LaunchRecord
from tiny import write_tiny_config

pytestmark = pytest.mark.slurm


def _invoke(*args) -> str:
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _the_job(slurm_cluster, out):
    record = LaunchRecord.load(out)
    assert record.executor == "slurm" and len(record.jobs) == 1
    job = record.job(record.jobs[0])
    assert slurm_cluster.wait(job, timeout=240) == "COMPLETED", job.stderr()
    return job.result()


def test_probe_finetune_and_embed_as_slurm_jobs(slurm_cluster, tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    _invoke("train", "--config", config)
    out = tmp_path / "out"
    slurm = ["--executor", "slurm", "--profile", "dev"]
    knn = ["--config", config, "--dataset", "mnist", "--checkpoint", "stage:target",
           "--mode", "knn", "--set", "probe.knn_k=5"]
    here = _invoke("probe", *knn).strip().splitlines()[-1]
    said = _invoke("probe", *knn, *slurm)
    assert "launched with executor 'slurm'" in said and "follow: hpt-hpc status" in said
    record = EvalRecord.from_json(_the_job(slurm_cluster, out))
    assert f"mnist: {record.describe()}" == here

    tune = ["--config", config, "--dataset", "mnist", "--checkpoint", "stage:target",
            "--labels", "10", "--iterations", "2", "--set", "finetune.batch_size=10",
            "--set", "finetune.eval_every=2"]
    _invoke("finetune", *tune)
    _invoke("finetune", *tune, *slurm)
    job = EvalRecord.from_json(_the_job(slurm_cluster, out))
    scores = [json.loads(p.read_text())["score"]
              for p in (out / "evaluations").glob("finetune*.json")]
    assert len(scores) == 2 and scores[0] == scores[1] == job.score

    embed = ["--config", config, "--dataset", "mnist", "--split", "val", "--checkpoint",
             "stage:target"]
    _invoke("embed", *embed, "--out", tmp_path / "here")
    _invoke("embed", *embed, "--out", tmp_path / "job", *slurm)
    result = _the_job(slurm_cluster, out)
    assert result["features"] == str(tmp_path / "job.npy")
    assert np.array_equal(np.load(tmp_path / "here.npy"), np.load(tmp_path / "job.npy"))
