"""`hpt-hpc data shard --executor slurm` against the real dev cluster (#28): an array over
shard ranges and a manifest job after it; the shards are the bytes of an in-process
packing."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.launch.record import LaunchRecord

pytestmark = pytest.mark.slurm


def _shard(src, dest, *args) -> str:
    result = CliRunner().invoke(cli, ["data", "shard", str(src), str(dest), "--split", "val",
                                      "--shard-size", "40k", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_shards_packed_by_a_slurm_array_are_those_of_one_process(slurm_cluster, tmp_path,
                                                                 mnist_tree):
    _shard(mnist_tree, tmp_path / "here")
    shards = len(json.loads((tmp_path / "here/val/manifest.json").read_text())["shards"])
    said = _shard(mnist_tree, tmp_path / "array", "--executor", "slurm", "--profile", "dev",
                  "--shards-per-job", "2")
    assert "launched with executor 'slurm'" in said and "follow: hpt-hpc status" in said
    record = LaunchRecord.load(tmp_path / "array")
    packs = [e for e in record.jobs if e.stage == "pack-val"]
    (manifest,) = [e for e in record.jobs if e.stage == "manifest-val"]
    assert shards > 2 and len(packs) == -(-shards // 2)
    assert len({e.job_id.split("_")[0] for e in packs}) == 1, "one array"
    assert manifest.depends_on == [packs[0].job_id.split("_")[0]]
    job = record.job(manifest)
    assert slurm_cluster.wait(job, timeout=300) == "COMPLETED", job.stderr()
    assert job.result()["complete"] and job.result()["shards"] == shards
    for entry in packs:
        assert slurm_cluster.sacct(entry.job_id)["State"] == "COMPLETED", entry.job_id
    assert _files(tmp_path / "array/val") == _files(tmp_path / "here/val")
