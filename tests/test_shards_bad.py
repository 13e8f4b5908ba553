"""Bad shards (#28), with real broken files: a corrupt image inside a shard, a truncated
tar, a sample without its label, a manifest that does not match. Each is named and
skipped, or one line where nothing sensible can be read; nothing hangs."""
import io
import json
import shutil
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from tiny import write_tiny_config

DATA = {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.5], "workers": 0}


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def packed(tmp_path_factory, mnist_tree):
    """48 real digits and a PNG cut short, packed into ~7-image shards."""
    root = tmp_path_factory.mktemp("bad")
    for path in sorted((mnist_tree / "val").glob("*/*.png"))[::4][:48]:
        target = root / "src" / "train" / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    broken = root / "src" / "train" / "5" / "broken.png"
    broken.write_bytes(next((root / "src" / "train" / "5").iterdir()).read_bytes()[:120])
    out = _invoke("data", "shard", root / "src", root / "shards", "--split", "train",
                  "--shard-size", "20k")
    assert out.exit_code == 0, out.output
    return root / "shards"


@pytest.fixture(scope="module")
def clean(packed):
    """The same digits without the broken one (DALI reads these shards itself)."""
    root = packed.parent
    shutil.copytree(root / "src", root / "clean-src")
    (root / "clean-src" / "train" / "5" / "broken.png").unlink()
    out = _invoke("data", "shard", root / "clean-src", root / "clean", "--split", "train",
                  "--shard-size", "20k")
    assert out.exit_code == 0, out.output
    return root / "clean"


def _copy(packed, tmp_path):
    shutil.copytree(packed, tmp_path / "copy")
    return tmp_path / "copy"


def _train(tmp_path, shards, backend="torchvision"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = write_tiny_config(tmp_path, {"d": shards}, {"target": {"dataset": "d"}},
                               data={**DATA, "backend": backend, "device": "cpu"})
    out = _invoke("train", "--config", config, "--set", "datasets.d.format=shards",
                  "--set", "optim.batch_size=4", "--set", "optim.iterations=12")
    result = tmp_path / "out" / "target" / "result.json"
    return out, json.loads(result.read_text()) if result.exists() else None


def _shard_of(shards, rel):
    """The tar holding the image packed from ``rel``."""
    for tar_path in sorted((shards / "train").glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            names = {m.name: m for m in tar.getmembers()}
            for name, member in names.items():
                if name.endswith(".path") and tar.extractfile(member).read().decode() == rel:
                    return tar_path, name[:-len(".path")]
    raise AssertionError(rel)


def test_a_corrupt_image_in_a_shard_is_named_and_skipped(tmp_path, packed):
    out, result = _train(tmp_path, packed)
    assert out.exit_code == 0, out.output
    # one epoch: 12 batches of 4 from 47 readable images (the last topped up)
    assert result["steps"] == 12 and result["skipped_images"] == 1
    check = _invoke("data", "check", packed, "--format", "shards", "--channels", "1")
    assert check.exit_code == 0 and "unreadable (1)" in check.output
    assert "5/broken.png" in check.output
    strict = _invoke("data", "check", packed, "--format", "shards", "--strict")
    assert strict.exit_code == 2


def test_a_truncated_shard_is_named_read_up_to_the_cut_or_refused_by_dali(tmp_path,
                                                                         clean, caplog):
    shards = _copy(clean, tmp_path)
    cut = sorted((shards / "train").glob("*.tar"))[1]
    cut.write_bytes(cut.read_bytes()[:7000])  # a copy that stopped half way
    check = _invoke("data", "check", shards, "--format", "shards", "--channels", "1")
    assert "damaged shards (1)" in check.output and cut.name in check.output
    assert "bytes, the manifest says" in check.output
    out, result = _train(tmp_path / "tv", shards)
    assert out.exit_code == 0, out.output
    # every image the cut lost is counted, by name: the manifest's count for that shard
    # minus the whole samples Python's own tarfile still finds in the cut copy
    manifest = json.loads((shards / "train" / "manifest.json").read_text())
    [entry] = [s for s in manifest["shards"] if s["name"] == cut.name]
    with tarfile.open(cut, ignore_zeros=True) as tar:
        whole = set()
        try:
            for m in tar:
                whole.add(m.name.split(".")[0]) if m.name.endswith(".cls") else None
        except tarfile.ReadError:
            pass
    lost = entry["count"] - len(whole)
    assert lost > 0 and result["steps"] == 12 and result["skipped_images"] == lost
    assert f"shard {cut} is damaged" in caplog.text
    assert "not read, its shard is damaged (truncated)" in caplog.text
    out, _ = _train(tmp_path / "dali", shards, backend="dali")
    assert out.exit_code == 2 and out.output.count("\n") == 1
    assert cut.name in out.output and "pack the split again" in out.output


def test_a_sample_without_its_label_is_named_and_skipped(tmp_path, packed):
    from hpt_hpc.data import build_pretrain_loader, list_split
    from tiny import tiny_config
    shards = _copy(packed, tmp_path)
    tar_path, key = _shard_of(shards, _first_rel(packed))
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for member, data in members:
            if member.name != f"{key}.cls":
                tar.addfile(member, io.BytesIO(data))
    tar_path.write_bytes(buffer.getvalue())
    cfg = tiny_config(tmp_path, {"d": shards}, {"target": {"dataset": "d"}}, data=DATA)
    cfg.datasets["d"].format = "shards"
    table, _ = list_split(cfg.datasets["d"], "train")
    loader = build_pretrain_loader(table, cfg.augment, cfg.data, 4, seed=0)
    stream = iter(loader)
    for _ in range(loader.steps_per_epoch):
        next(stream)
    reasons = loader.skipped.reasons
    assert any("lacks its label (.cls)" in r and key in r for r in reasons.values()), reasons
    check = _invoke("data", "check", shards, "--format", "shards", "--channels", "1")
    assert "damaged shards (1)" in check.output and tar_path.name in check.output


def _first_rel(packed):
    """The path of the first packed image."""
    with np.load(packed / "train" / "listing.npz") as data:
        return bytes(data["blob"][:data["ends"][0]]).decode()


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(images=m["images"] + 1), "counts 50 images"),
    (lambda m: m.update(format="something/else"), "is not a manifest of `hpt-hpc data shard`"),
    (lambda m: m["shards"][0].update(name="../../etc/passwd"), "is not a file name"),
])
def test_a_manifest_that_does_not_match_is_one_line(tmp_path, packed, edit, message):
    shards = _copy(packed, tmp_path)
    manifest_path = shards / "train" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    edit(manifest)
    manifest_path.write_text(json.dumps(manifest))
    for out in (_train(tmp_path, shards)[0],
                _invoke("data", "check", shards, "--format", "shards")):
        assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
        assert message in out.output and "pack it again" in out.output
