"""Compact record tables and the dataset index (`hpt-hpc data index`) on real trees."""
from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from hpt_hpc.cli.main import cli
from hpt_hpc.data import ImageRecord, RecordTable, check_dataset, list_split
from hpt_hpc.data import sources
from hpt_hpc.data.index import index_paths, load_index
from hpt_hpc.data.sources import scan_split


def make_tree(root: Path, classes=("a", "b", "c"), per_class=4) -> Path:
    for c in classes:
        (root / "train" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.new("L", (8, 8), i * 20).save(root / "train" / c / f"{i:03d}.png")
    age(root)
    return root


def age(root: Path, seconds: int = 3600) -> None:
    """Date every folder back, as a tree that has not changed for a while."""
    past = time.time() - seconds
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (past, past))


def ds(root: Path, fmt="imagefolder", split="train", name="train"):
    return SimpleNamespace(path=str(root), format=fmt, splits={split: name}, max_images=None)


def index(root: Path, *args) -> str:
    result = CliRunner().invoke(cli, ["data", "index", str(root), *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_table_holds_the_records_it_was_built_from(tmp_path):
    records = [ImageRecord(str(tmp_path / "x" / "a.png"), (2,)),
               ImageRecord(str(tmp_path / "é b.png"), ()),
               ImageRecord("/elsewhere/c.png", (1, 4, 0))]
    table = RecordTable.from_records(records, root=str(tmp_path))
    assert list(table) == records and table == records and len(table) == 3
    assert table[-1] == records[-1] and table[0:2] == records[0:2]
    assert list(table.paths) == [r.path for r in records]
    assert table.max_label() == 4 and table.multi_label
    assert table.first_labels().tolist() == [2, -1, 1]
    assert list(table.take([2, 0])) == [records[2], records[0]]
    assert table.blob.nbytes < sum(len(r.path) for r in records)  # below root: relative
    with pytest.raises(IndexError):
        table[3]


def test_index_is_reused_until_a_folder_changes(tmp_path, monkeypatch):
    root = make_tree(tmp_path / "d")
    out = index(root)
    assert "train: 12 images, 3 classes, 4 folder(s) watched" in out
    saved = index_paths(str(root / "train"))[0]
    assert saved.is_file() and str(saved) in out
    listed = scan_split(ds(root), "train", use_index=False)

    def no_walking(*args):
        raise AssertionError("the tree was listed although its index is valid")

    with monkeypatch.context() as m:
        m.setattr(sources.os, "scandir", no_walking)
        from_index = scan_split(ds(root), "train")
        assert from_index.records == listed.records and from_index.classes == ["a", "b", "c"]
        records, classes = list_split(ds(root), "train")
        assert records == listed.records

    cases = [lambda: Image.new("L", (8, 8)).save(root / "train" / "b" / "new.png"),
             lambda: os.rename(root / "train" / "a" / "000.png", root / "train" / "a" / "z.png"),
             lambda: os.remove(root / "train" / "c" / "001.png"),
             lambda: (root / "train" / "d").mkdir()]
    for change in cases:
        index(root)
        change()
        assert load_index(str(root / "train"), "imagefolder") is None
        assert scan_split(ds(root), "train").records == \
            scan_split(ds(root), "train", use_index=False).records
    assert "d" in scan_split(ds(root), "train").classes


def test_a_fresh_or_foreign_index_is_not_trusted(tmp_path):
    root = make_tree(tmp_path / "d")
    listing = scan_split(ds(root), "train", use_index=False)
    from hpt_hpc.data.index import save_index
    Image.new("L", (8, 8)).save(root / "train" / "a" / "late.png")  # changed just now
    save_index(str(root / "train"), "imagefolder", listing._replace(built_ns=time.time_ns()))
    assert load_index(str(root / "train"), "imagefolder") is None  # within RACY_NS
    age(root)
    index(root)
    assert load_index(str(root / "train"), "imagefolder") is not None
    assert load_index(str(root / "train"), "filelist") is None  # another format
    index_paths(str(root / "train"))[0].write_bytes(b"not an index")
    assert load_index(str(root / "train"), "imagefolder") is None
    assert len(scan_split(ds(root), "train").records) == 13


def test_file_lists_and_the_cache_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "d")
    lines = [f"train/{c}/{i:03d}.png,{k}" for k, c in enumerate("abc") for i in range(4)]
    (root / "train.csv").write_text("path,label\n" + "\n".join(lines) + "\n")
    past = time.time() - 3600
    os.utime(root / "train.csv", (past, past))
    index_paths(str(root / "train.csv"))[0].mkdir()  # the place beside it cannot be written
    out = index(root, "--format", "filelist", "--split", "train.csv")
    assert str(tmp_path / "cache" / "hpt-hpc" / "index") in out
    table = scan_split(ds(root, "filelist", name="train.csv"), "train").records
    assert [r.labels for r in table] == [(k,) for k in range(3) for _ in range(4)]
    with open(root / "train.csv", "a") as handle:
        handle.write("train/a/000.png,7\n")
    assert load_index(str(root / "train.csv"), "filelist") is None
    assert scan_split(ds(root, "filelist", name="train.csv"), "train").classes[-1] == "7"


def test_a_folder_that_is_its_own_split_keeps_its_index_inside(tmp_path, monkeypatch):
    """README: the index is saved inside the dataset folder; for a plain folder of images
    (format folder, no train/) that means my-images/.hpt-index/, nothing beside it."""
    folder = tmp_path / "my-images"
    (folder / "nested").mkdir(parents=True)
    for i in range(6):
        Image.new("L", (8, 8), i * 30).save(folder / ("nested" if i % 2 else ".") / f"{i}.png")
    age(folder)
    out = index(folder, "--format", "folder")
    saved = folder / ".hpt-index" / "listing.npz"
    assert "train: 6 images, 0 classes, 2 folder(s) watched" in out and str(saved) in out
    assert saved.is_file() and os.listdir(tmp_path) == ["my-images"]
    listed = scan_split(ds(folder, "folder"), "train", use_index=False)
    assert len(listed.records) == 6 and listed.others == []  # the index is not listed

    def no_walking(*args):
        raise AssertionError("the tree was listed although its index is valid")

    with monkeypatch.context() as m:
        m.setattr(sources.os, "scandir", no_walking)
        assert scan_split(ds(folder, "folder"), "train").records == listed.records
    report = CliRunner().invoke(cli, ["data", "check", str(folder), "--format", "folder"])
    assert report.exit_code == 0 and ".hpt-index" not in report.output.replace(
        f"listing saved for reuse: {saved}", ""), report.output
    assert os.listdir(tmp_path) == ["my-images"]
    Image.new("L", (8, 8)).save(folder / "new.png")
    assert len(scan_split(ds(folder, "folder"), "train").records) == 7


def test_data_check_saves_the_index_and_missing_paths_are_one_line(tmp_path):
    root = make_tree(tmp_path / "d")
    report = check_dataset(str(root), splits=["train"])
    assert report["splits"]["train"]["index"] == str(index_paths(str(root / "train"))[0])
    assert load_index(str(root / "train"), "imagefolder").records == \
        scan_split(ds(root), "train", use_index=False).records
    result = CliRunner().invoke(cli, ["data", "index", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("error:")]


def test_loader_workers_read_the_table(tmp_path):
    """Forked loader workers index the shared arrays: same batches as in-process."""
    from hpt_hpc.config import DataConfig
    from hpt_hpc.data import EvalLoader
    root = make_tree(tmp_path / "d")
    records = scan_split(ds(root), "train").records
    cfg = DataConfig(image_size=8, channels=1)
    runs = [[(x.numpy(), y.numpy()) for x, y in EvalLoader(records, cfg, 5, workers=w)]
            for w in (0, 2)]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(*runs)) and sum(len(y) for _, y in runs[0]) == 12
