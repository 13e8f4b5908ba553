"""DINO stages (#25) through `hpt-hpc launch` on the real dev cluster: a MoCo base chained
into a DINO target array, two DDP ranks that agree (centre included), and a preempted DINO
stage that resumes to the end state of an uninterrupted one."""
from __future__ import annotations

from pathlib import Path

import pytest

from hpt_hpc.launch.commands import launch
from hpt_hpc.launch.options import build_options
from hpt_hpc.launch.record import LaunchRecord
from hpt_hpc.models import load_checkpoint
from preempt import preempted_equals_uninterrupted
from tiny import write_tiny_config

pytestmark = pytest.mark.slurm

DINO = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "freeze_last_layer_steps": 2,
        "collapse_min_feature_std": 0.0, "collapse_min_kl": 0.0}
OPTIM = {"optimizer": "adamw", "lr": 0.001, "batch_size": 8, "iterations": 6,
         "clip_grad": 3.0, "weight_decay": 0.04, "weight_decay_end": 0.4,
         "decay_norms_and_biases": False}


def write_config(folder: Path, datasets: dict, stages: dict, **sections) -> Path:
    sections.setdefault("optim", OPTIM)
    sections.setdefault("checkpoint", {"every": 1000})
    sections.setdefault("dino", DINO)
    return write_tiny_config(folder, datasets, stages, **sections)


def jobs_of(record: LaunchRecord, stage: str):
    return [record.job(e) for e in record.jobs if e.stage == stage]


def test_a_dino_target_array_starts_from_a_moco_base(slurm_cluster, tmp_path, mnist_tree,
                                                     fashion_tree):
    """base (MoCo-v2) -> target (DINO, 2 local crops) over 2 seeds: one array that waits
    for the base; each element loads the base's backbone and starts fresh DINO heads."""
    cfg = write_config(tmp_path, {"fashion": fashion_tree, "mnist": mnist_tree},
                       {"base": {"dataset": "fashion", "ssl": "moco-v2"},
                        "target": {"dataset": "mnist", "variant": "full", "ssl": "dino",
                                   "init": "stage:base"}},
                       augment={"local_crops": {"number": 2}}, grid={"seed": [0, 1]},
                       optim={**OPTIM, "optimizer": "sgd", "lr": 0.05})
    record = launch(str(cfg), ["base", "target"], build_options("dev", executor="slurm"))
    base_job = jobs_of(record, "base")[0]
    targets = jobs_of(record, "target")
    assert len(targets) == 2 and len({str(j.job_id).split("_")[0] for j in targets}) == 1
    assert all(e.depends_on == [str(base_job.job_id)] for e in record.jobs
               if e.stage == "target")
    base = load_checkpoint(base_job.result()["checkpoint"])
    results = [job.result() for job in targets]
    assert [r["steps"] for r in results] == [6, 6]
    assert len({r["param_digest"] for r in results}) == 2, "seeds must give different runs"
    for result in results:
        ckpt = load_checkpoint(result["checkpoint"])
        assert (base["ssl"], ckpt["ssl"]) == ("moco-v2", "dino")
        assert ckpt["init_report"]["ssl"] == "moco-v2"
        assert not ckpt["init_report"]["head_loaded"]
        assert ckpt["init_report"]["loaded"] == ckpt["init_report"]["of"] > 0


def test_two_dino_ranks_end_with_identical_weights_and_centre(slurm_cluster, tmp_path,
                                                              mnist_tree):
    cfg = write_config(tmp_path, {"mnist": mnist_tree},
                       {"target": {"dataset": "mnist", "variant": "scratch", "ssl": "dino"}})
    record = launch(str(cfg), ["target"], build_options("dev", executor="slurm",
                                                        tasks_per_node=2))
    results = jobs_of(record, "target")[0].results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert results[0]["param_digest"] == results[1]["param_digest"]
    ckpt = load_checkpoint(results[0]["checkpoint"])
    assert ckpt["ssl"] == "dino" and ckpt["model"]["center"].abs().sum() > 0


def test_a_preempted_dino_stage_resumes_bit_identically(slurm_cluster, tmp_path,
                                                        mnist_tree):
    """SIGUSR2 mid-run: the teacher, centre, schedules and optimiser state resume so that
    the end state equals an uninterrupted run's."""
    stages = {"target": {"dataset": "mnist", "variant": "scratch", "ssl": "dino",
                         "iterations": 200}}
    result = preempted_equals_uninterrupted(
        slurm_cluster, tmp_path, lambda folder: write_config(
            folder, {"mnist": mnist_tree}, stages, progress_seconds=0.2), "target", 200, 20)
    assert "center" in load_checkpoint(result["checkpoint"])["model"]
