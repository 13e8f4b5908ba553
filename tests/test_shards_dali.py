"""Tar shards on the DALI backend (#28): DALI's own ``fn.readers.webdataset`` with the
index files of `hpt-hpc data shard`, the same semantics as the torchvision shard loaders."""
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from hpt_hpc.cli.main import cli
from hpt_hpc.data import build_eval_loader, build_pretrain_loader, list_split
from hpt_hpc.models import load_checkpoint
from test_dali_common import DEVICE
from tiny import run_stage_of, tiny_config

pytest.importorskip("nvidia.dali")
from hpt_hpc.data.dali_shards import (DaliShardEvalLoader,  # noqa: E402
                                      DaliShardPretrainLoader)
from hpt_hpc.data.loader import EvalLoader  # noqa: E402
from hpt_hpc.data.shard_loader import ShardPretrainLoader  # noqa: E402

DALI = {"backend": "dali", "device": DEVICE, "image_size": 16, "channels": 1,
        "mean": [0.5], "std": [0.5], "workers": 1}


@pytest.fixture(scope="module")
def packed(tmp_path_factory, mnist_tree):
    dest = tmp_path_factory.mktemp("shards") / "mnist"
    out = CliRunner().invoke(cli, ["data", "shard", str(mnist_tree), str(dest),
                                   "--shard-size", "40k"])
    assert out.exit_code == 0, out.output
    return dest


def _cfg(tmp_path, packed, **data):
    cfg = tiny_config(tmp_path, {"mnist": packed},
                      {"target": {"dataset": "mnist", "variant": "scratch"}},
                      data={**DALI, **data})
    cfg.datasets["mnist"].format = "shards"
    return cfg


def test_dali_evaluates_shards_in_the_packed_order_like_torchvision(tmp_path, packed):
    cfg = _cfg(tmp_path, packed)
    table, _ = list_split(cfg.datasets["mnist"], "test")
    dali = build_eval_loader(table, cfg.data, batch_size=64)
    cfg.data.backend = "torchvision"
    reference = build_eval_loader(table, cfg.data, batch_size=64, workers=2)
    assert isinstance(dali, DaliShardEvalLoader) and isinstance(reference, EvalLoader)
    got = [(x, y) for x, y in dali]
    want = [(x, y) for x, y in reference]
    assert [y.tolist() for _, y in got] == [y.tolist() for _, y in want]
    labels = torch.cat([y for _, y in want]).tolist()
    assert labels == [table.labels_of(i)[0] for i in range(len(table))]  # packed order
    for (a, _), (b, _) in zip(got, want):  # resampling kernels differ by a few levels
        assert a.shape == b.shape and (a - b).abs().mean() < 0.05


def test_dali_ranks_read_disjoint_samples_in_a_stream_of_seed_and_epoch(tmp_path, packed):
    cfg = _cfg(tmp_path, packed)
    table, _ = list_split(cfg.datasets["mnist"], "train")

    def epochs(rank, seed=3):
        loader = build_pretrain_loader(table, cfg.augment, cfg.data, 8, seed=seed,
                                       rank=rank, world_size=2)
        assert isinstance(loader, DaliShardPretrainLoader)
        stream, rows = iter(loader), []
        for _ in range(2 * loader.steps_per_epoch):
            next(stream)
            rows.append(list(loader.rows))
        n = loader.steps_per_epoch
        return sum(rows[:n], []), sum(rows[n:], [])

    (a1, a2), (b1, _) = epochs(0), epochs(1)
    assert len(set(a1)) == len(a1) == 100 // 8 * 8  # no sample twice in an epoch
    assert set(a1) <= set(range(100)) and set(b1) <= set(range(100, 200))  # disjoint
    assert a1 != a2 and epochs(0) == (a1, a2)  # another order each epoch, reproducible


def test_a_stage_on_shards_trains_and_resumes_bit_identically_on_dali(tmp_path, packed):
    """With augmentation on: each epoch's pipeline is seeded by seed, rank and epoch and a
    resume replays the batches before it, so the stopped-and-resumed stage ends as the
    uninterrupted one."""
    full = run_stage_of(_cfg(tmp_path / "full", packed), "target")
    cut = _cfg(tmp_path / "cut", packed)
    assert run_stage_of(cut, "target", stop_after=3).steps == 3
    rest = run_stage_of(cut, "target")
    assert rest.resumed_from == 3 and rest.completed
    a, b = load_checkpoint(full.checkpoint)["model"], load_checkpoint(rest.checkpoint)["model"]
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_shards_dali_would_decode_unlike_the_reference_go_to_torchvision(tmp_path,
                                                                         mnist_tree, caplog):
    src = tmp_path / "src"
    for i, path in enumerate(sorted((mnist_tree / "val").glob("*/*.png"))[:24]):
        (src / "train" / path.parent.name).mkdir(parents=True, exist_ok=True)
        img = Image.open(path)
        if i == 5:  # an alpha channel: DALI would drop it, the reference composites it
            img = img.convert("LA")
        img.save(src / "train" / path.parent.name / path.name)
    out = CliRunner().invoke(cli, ["data", "shard", str(src), str(tmp_path / "sh"),
                                   "--split", "train"])
    assert out.exit_code == 0, out.output
    manifest = json.loads((tmp_path / "sh" / "train" / "manifest.json").read_text())
    assert manifest["dali_indirect"]["count"] == 1
    cfg = _cfg(tmp_path, tmp_path / "sh")
    table, _ = list_split(cfg.datasets["mnist"], "train")
    loader = build_pretrain_loader(table, cfg.augment, cfg.data, 8, seed=0)
    assert isinstance(loader, ShardPretrainLoader)
    assert "1 of the 24 packed images" in caplog.text and "torchvision" in caplog.text


def test_train_on_shards_with_dali_through_the_cli(tmp_path, packed):
    from tiny import write_tiny_config
    config = write_tiny_config(tmp_path, {"mnist": packed},
                               {"target": {"dataset": "mnist", "variant": "scratch"}},
                               data=DALI)
    out = CliRunner().invoke(cli, ["train", "--config", str(config),
                                   "--set", "datasets.mnist.format=shards"])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "out" / "target" / "result.json").read_text())
    assert result["steps"] == 6


def test_dali_refuses_a_corrupt_image_in_a_shard_in_one_line(tmp_path, packed):
    """DALI never skips a sample (a corrupt image fails the stage), so the batches a
    resume replays are always those of the unbroken run; the line names the failure."""
    import shutil
    import tarfile
    shards = tmp_path / "shards"
    shutil.copytree(packed, shards)
    tar_path = sorted((shards / "train").glob("*.tar"))[0]
    with tarfile.open(tar_path) as tar:
        member = [m for m in tar.getmembers() if m.name.endswith(".png")][1]
    data = bytearray(tar_path.read_bytes())  # zeros after the PNG header, same size
    data[member.offset_data + 40:member.offset_data + member.size] = bytes(member.size - 40)
    tar_path.write_bytes(bytes(data))
    from tiny import write_tiny_config
    config = write_tiny_config(tmp_path, {"mnist": shards},
                               {"target": {"dataset": "mnist", "variant": "scratch"}},
                               data=DALI)
    out = CliRunner().invoke(cli, ["train", "--config", str(config), "--set",
                                   "datasets.mnist.format=shards", "--set",
                                   "optim.iterations=25"])  # one epoch of rank 0
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    assert "DALI could not read the shards: " in out.output, out.output
    assert "Critical error" not in out.output and "data check" in out.output
    check = CliRunner().invoke(cli, ["data", "check", str(shards), "--format", "shards",
                                     "--channels", "1"])
    assert "damaged shards (1)" in check.output and tar_path.name in check.output
