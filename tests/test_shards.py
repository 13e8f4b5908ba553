"""Tar shards end to end (#28): `hpt-hpc data shard` (deterministic, resumable, DALI
index files, manifest), `format: shards` read by the loaders, a stage trained and resumed
on shards through the CLI."""
import hashlib
import json
import tarfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.models import load_checkpoint
from tiny import run_stage_of, tiny_config, write_tiny_config


def _shard(src, dest, *args):
    out = CliRunner().invoke(cli, ["data", "shard", str(src), str(dest), *args])
    return out


@pytest.fixture(scope="module")
def mnist_shards(tmp_path_factory, mnist_tree) -> Path:
    dest = tmp_path_factory.mktemp("shards") / "mnist"
    out = _shard(mnist_tree, dest, "--shard-size", "40k")
    assert out.exit_code == 0, out.output
    return dest


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_packing_is_deterministic_and_keeps_every_image_unchanged(tmp_path, mnist_tree,
                                                                  mnist_shards):
    again = tmp_path / "again"
    out = _shard(mnist_tree, again, "--shard-size", "40k")
    assert out.exit_code == 0, out.output
    for split in ("train", "val", "test"):
        assert _files(mnist_shards / split) == _files(again / split), split
    manifest = json.loads((mnist_shards / "train" / "manifest.json").read_text())
    listed = sorted((mnist_tree / "train").glob("*/*.png"))
    assert manifest["images"] == len(listed) == sum(s["count"] for s in manifest["shards"])
    assert manifest["classes"] == sorted(p.name for p in (mnist_tree / "train").iterdir()
                                         if p.is_dir())
    assert manifest["bands"] == {"1": len(listed)}  # grey PNGs
    seen = {}
    for entry in manifest["shards"]:
        path = mnist_shards / "train" / entry["name"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert path.stat().st_size == entry["bytes"]
        with tarfile.open(path) as tar:
            members = tar.getmembers()
            assert {(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members} == \
                {(0, 0, 0, "", 0o644)}
            data = {m.name: tar.extractfile(m).read() for m in members}
        keys = sorted({name.split(".")[0] for name in data})
        assert len(keys) == entry["count"]
        for key in keys:
            rel = data[f"{key}.path"].decode()
            seen[rel] = key
            assert data[f"{key}.png"] == (mnist_tree / "train" / rel).read_bytes()
            assert data[f"{key}.cls"].decode() == str(manifest["classes"].index(
                rel.split("/")[0]))
    assert sorted(seen) == sorted(str(p.relative_to(mnist_tree / "train")) for p in listed)
    first = [seen[k] for k in sorted(seen)][:20]  # packed in a seeded order, classes mixed
    assert first != sorted(first)


def test_the_dali_index_files_are_those_of_dalis_own_tool(tmp_path, mnist_shards):
    from wds2idx import IndexCreator
    for tar in sorted((mnist_shards / "val").glob("*.tar"))[:3]:
        ours = tar.with_suffix(".idx").read_text()
        with IndexCreator(str(tar), str(tmp_path / "theirs.idx"), verbose=False) as creator:
            creator.create_index()
        assert ours == (tmp_path / "theirs.idx").read_text()


def test_an_interrupted_packing_keeps_verified_shards_and_rewrites_the_rest(tmp_path,
                                                                            mnist_tree):
    dest = tmp_path / "shards"
    assert _shard(mnist_tree, dest, "--split", "val", "--shard-size", "40k").exit_code == 0
    folder = dest / "val"
    before = _files(folder)
    shards = sorted(folder.glob("*.tar"))
    damaged, missing = shards[1], shards[2]
    damaged.write_bytes(damaged.read_bytes()[:5000])  # truncated by a killed job
    missing.unlink()
    (folder / "manifest.json").unlink()
    out = _shard(mnist_tree, dest, "--split", "val", "--shard-size", "40k")
    assert out.exit_code == 0, out.output
    assert f"({len(shards) - 2} kept, 2 written)" in out.output
    assert _files(folder) == before


def test_a_shard_folder_inside_the_dataset_or_a_bad_size_is_one_line(mnist_tree):
    out = _shard(mnist_tree, mnist_tree / "packed")
    assert out.exit_code == 2 and "overlaps the dataset" in out.output
    assert not (mnist_tree / "packed").exists()
    out = _shard(mnist_tree, "/tmp/never", "--shard-size", "lots")
    assert out.exit_code == 2 and out.output.count("\n") == 1 and "64MB" in out.output


def _shard_config(tmp_path, shards, **sections):
    cfg = tiny_config(tmp_path, {"mnist": shards},
                      {"target": {"dataset": "mnist", "variant": "scratch"}}, **sections)
    cfg.datasets["mnist"].format = "shards"
    return cfg


def _rows(loader, epochs=1):
    """The packed rows a pretraining loader's stream delivers, per epoch."""
    from hpt_hpc.data.shard_loader import _stream_loader
    out = []
    for epoch in range(epochs):
        loader.stream.epoch, loader.stream.skips = epoch, [0]
        loader.stream.uses = loader.worker_batches()  # every whole batch of each worker
        items = _stream_loader(loader.stream, loader.workers, 0)
        out.append([row for batch, _ in items for row in batch[2].tolist()])
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_read_disjoint_shards_in_a_seeded_order(tmp_path, mnist_shards,
                                                                  workers):
    from hpt_hpc.data import build_pretrain_loader, list_split
    cfg = _shard_config(tmp_path, mnist_shards)
    table, _ = list_split(cfg.datasets["mnist"], "train")
    loaders = [build_pretrain_loader(table, cfg.augment, cfg.data, 8, seed=3, rank=r,
                                     world_size=2, workers=workers) for r in range(2)]
    streams = [_rows(loader, epochs=2) for loader in loaders]
    for rank, (first, second) in enumerate(streams):
        shards = [s for i, s in enumerate(table.shards) if i % 2 == rank]
        rows = {r for s in shards for r in range(s.first, s.first + s.count)}
        for epoch in (first, second):  # rows of its own shards, none twice, whole batches
            assert len(set(epoch)) == len(epoch) and set(epoch) <= rows
            assert len(rows) - len(epoch) < 8 * max(1, workers)
        assert first != second  # another order each epoch
    assert not set(streams[0][0]) & set(streams[1][0])
    again = build_pretrain_loader(table, cfg.augment, cfg.data, 8, seed=3, rank=0,
                                  world_size=2, workers=workers)
    assert _rows(again, epochs=2) == streams[0]  # a function of seed and epoch
    assert loaders[0].steps_per_epoch == min(len(s[0]) for s in streams) // 8


@pytest.mark.parametrize("workers", [0, 2])
def test_a_loader_set_to_a_step_continues_the_epochs_stream(tmp_path, mnist_shards, workers):
    """What resuming relies on: epoch 1 from batch 5 is epoch 1's stream from batch 5,
    also when the batches come from several workers in turn."""
    from hpt_hpc.data import build_pretrain_loader, list_split
    cfg = _shard_config(tmp_path, mnist_shards)
    table, _ = list_split(cfg.datasets["mnist"], "train")

    def rows(step):
        loader = build_pretrain_loader(table, cfg.augment, cfg.data, 8, seed=1, rank=1,
                                       world_size=2, workers=workers, start_epoch=1,
                                       start_step=step)
        stream, out = iter(loader), []
        for _ in range(loader.steps_per_epoch - step):  # to the end of epoch 1
            next(stream)
            out.append(loader.rows)
        return out
    whole = rows(0)
    assert rows(5) == whole[5:]
    assert len({r for batch in whole for r in batch}) == 8 * len(whole)


def test_a_stage_trains_on_shards_through_the_cli(tmp_path, mnist_shards):
    config = write_tiny_config(tmp_path, {"mnist": mnist_shards},
                               {"target": {"dataset": "mnist", "variant": "scratch"}})
    out = CliRunner().invoke(cli, ["train", "--config", str(config),
                                   "--set", "datasets.mnist.format=shards"])
    assert out.exit_code == 0, out.output
    result = json.loads((tmp_path / "out" / "target" / "result.json").read_text())
    assert result["steps"] == 6


@pytest.mark.parametrize("workers,cut", [(0, 3), (2, 3), (2, 31)])
def test_a_stage_on_shards_resumes_bit_identically(tmp_path, mnist_shards, workers, cut):
    """Stopped after ``cut`` of 40 steps (batch 8; 3: mid-epoch, 31: in the second epoch)
    and resumed, the stage ends with the weights of an uninterrupted run: the shard stream
    restarts at the same sample and, in loader workers, with the same augmentation draws
    (each worker's generator advanced over the batches it passes)."""
    def config(folder):
        cfg = _shard_config(folder, mnist_shards, optim={
            "lr": 0.05, "batch_size": 8, "iterations": 40, "weight_decay": 1e-4})
        cfg.data.workers, cfg.data.shuffle_buffer = workers, 64
        return cfg
    full = run_stage_of(config(tmp_path / "full"), "target")
    cut_cfg = config(tmp_path / "cut")
    part = run_stage_of(cut_cfg, "target", stop_after=cut)
    assert not part.completed and part.steps == cut
    rest = run_stage_of(cut_cfg, "target")
    assert rest.resumed_from == cut and rest.steps == 40
    a, b = load_checkpoint(full.checkpoint), load_checkpoint(rest.checkpoint)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_shards_written_by_separate_calls_are_those_of_one_packing(tmp_path, mnist_tree,
                                                                   mnist_shards):
    """What an array job over shard ranges relies on: shard i depends only on the plan
    and i; the call that finds every shard written writes the manifest."""
    from types import SimpleNamespace
    from hpt_hpc.data.shards import shard_split
    ds = SimpleNamespace(path=str(mnist_tree), format="imagefolder",
                         splits={"train": "train"}, max_images=None)
    dest = tmp_path / "train"
    first = shard_split(ds, "train", str(dest), 40000, shards=[3, 1, 0], log=lambda _: None)
    assert not first["complete"] and first["written"] == [3, 1, 0]
    assert not (dest / "manifest.json").exists()
    rest = shard_split(ds, "train", str(dest), 40000, shards=range(2, first["shards"]),
                       log=lambda _: None)
    assert rest["complete"] and rest["kept"] == [3] and 2 in rest["written"]
    assert _files(dest) == _files(mnist_shards / "train")
