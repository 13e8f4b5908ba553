"""`hpt-hpc data shard --executor local|slurm` (#28): per split a job array over shard
ranges and a manifest job after it, on the one submitter; the result is byte-identical
to packing in this process (the debug executor)."""
import json
from pathlib import Path

from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.launch.record import LaunchRecord


def shard_cli(src, dest, *args):
    return CliRunner().invoke(cli, ["data", "shard", str(src), str(dest), "--shard-size",
                                    "40k", *args])


def split_files(folder: Path) -> dict:
    """Every file a packing writes for one split, by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_local_array_packs_the_bytes_of_an_in_process_packing(tmp_path, mnist_tree):
    here = shard_cli(mnist_tree, tmp_path / "here", "--split", "val", "--split", "test")
    assert here.exit_code == 0, here.output
    out = shard_cli(mnist_tree, tmp_path / "array", "--executor", "local",
                    "--shards-per-job", "2", "--split", "val", "--split", "test")
    assert out.exit_code == 0, out.output
    record = LaunchRecord.load(tmp_path / "array")
    for split in ("val", "test"):
        assert split_files(tmp_path / "array" / split) == split_files(tmp_path / "here" / split)
        shards = len(json.loads((tmp_path / "here" / split / "manifest.json").read_text())
                     ["shards"])
        packs = [e for e in record.jobs if e.stage == f"pack-{split}"]
        manifest = [e for e in record.jobs if e.stage == f"manifest-{split}"]
        assert len(packs) == -(-shards // 2) and shards > 2, (split, shards)
        assert len(manifest) == 1 and set(manifest[0].depends_on) == {e.job_id for e in packs}
    assert not (tmp_path / "array" / "train").exists()



def test_a_job_whose_listing_changed_since_submission_refuses_to_pack(tmp_path, mnist_tree):
    """Array jobs take the cuts planned at submission (no image sizes read again) only
    while the split lists the same images; an image removed since: one line, nothing
    written."""
    import shutil
    from types import SimpleNamespace

    import pytest

    from hpt_hpc.data.shards import pack_plan, shard_split
    from hpt_hpc.data.sources import DatasetError
    shutil.copytree(mnist_tree / "val", tmp_path / "src" / "val")
    ds = SimpleNamespace(path=str(tmp_path / "src"), format="imagefolder",
                         splits={"val": "val"}, max_images=None)
    dest = tmp_path / "shards" / "val"
    known = pack_plan(ds, "val", str(dest), 40000)[2]
    sorted((tmp_path / "src" / "val").glob("*/*.png"))[0].unlink()
    with pytest.raises(DatasetError, match="changed since the packing was planned"):
        shard_split(ds, "val", str(dest), 40000, shards=[0], known=known, log=print)
    assert not dest.exists() or not list(dest.iterdir())


def test_bad_input_is_one_line_before_any_job_is_submitted(tmp_path, mnist_tree):
    inside = shard_cli(mnist_tree, mnist_tree / "packed", "--executor", "local")
    assert inside.exit_code == 2 and inside.output.startswith("error: ") and \
        "overlaps the dataset" in inside.output and len(inside.output.splitlines()) == 1
    assert not (mnist_tree / "packed").exists()
    size = CliRunner().invoke(cli, ["data", "shard", str(mnist_tree), str(tmp_path / "s"),
                                    "--shard-size", "lots", "--executor", "local"])
    assert size.exit_code == 2 and "is not a size" in size.output, size.output
    assert not (tmp_path / "s").exists()
