"""Tar shards (#28) on the dev cluster: a stage reading `format: shards` is preempted,
requeued and resumes to the end state of an uninterrupted one (same sample stream), with
two loader workers reading disjoint shards; two DDP ranks read disjoint shards too."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.launch.commands import launch
from hpt_hpc.launch.options import build_options
from preempt import preempted_equals_uninterrupted
from tiny import tiny_config_data

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory, mnist_tree) -> Path:
    dest = tmp_path_factory.mktemp("shards") / "mnist"
    out = CliRunner().invoke(cli, ["data", "shard", str(mnist_tree), str(dest),
                                   "--shard-size", "40k"])
    assert out.exit_code == 0, out.output
    return dest


def write_config(folder: Path, shards: Path, iterations: int, workers: int = 0,
                 **sections) -> Path:
    data = tiny_config_data(
        folder / "out", {"mnist": shards},
        {"target": {"dataset": "mnist", "variant": "scratch", "iterations": iterations}},
        checkpoint={"every": 1000}, **sections)
    data["datasets"]["mnist"]["format"] = "shards"
    data["data"].update(workers=workers, shuffle_buffer=64)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_a_preempted_stage_on_shards_resumes_bit_identically(slurm_cluster, tmp_path,
                                                             mnist_shards):
    preempted_equals_uninterrupted(
        slurm_cluster, tmp_path, lambda folder: write_config(
            folder, mnist_shards, 300, workers=2, progress_seconds=0.2), "target", 300, 30)


def test_two_ranks_on_shards_end_with_identical_weights(slurm_cluster, tmp_path,
                                                        mnist_shards):
    record = launch(str(write_config(tmp_path, mnist_shards, 6)), ["target"],
                    build_options("dev", executor="slurm", tasks_per_node=2))
    results = record.job(record.jobs[0]).results()
    assert sorted(r["rank"] for r in results) == [0, 1]
    assert results[0]["param_digest"] == results[1]["param_digest"]
    assert all(r["steps"] == 6 for r in results)
