"""Hostile datasets through the real CLI (issue #24, round two). Which mechanism covers
which case of the issue:

* 5  -- an edited dataset index: the index carries a digest of its root, listing
  parameters and entries, and every entry must stay inside the split folder; otherwise
  the split is listed again (one log line) and nothing outside it is read.
* 10 -- a multi-page TIFF: ``data.max_pixels`` counts every page and band read and the
  bytes per sample, checked from the header before decoding.
* 27 -- the default ``data.max_pixels`` keeps one decode bounded (a 7000x7000 RGBA PNG
  is refused from its header).
* 24 -- symlink loops in a dataset: each folder is walked once, no traceback.
* 18 -- a float TIFF with NaN pixels is unreadable (named by ``data check``, skipped by
  ``data stats`` and training).
* 17 -- ``data index`` on a read-only dataset saves the index in the user cache.
* 25 -- a file list that is not UTF-8: one line naming the file and the byte offset.
* 26 -- ``data stats`` with no readable image: one line.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mounts import cli_in_mounts, read_only
from tiny import write_tiny_config
from usererror import assert_user_error, clear_tracking_env, run


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    clear_tracking_env(monkeypatch)


def small_tree(root: Path, classes=("0", "1"), per_class=3, split="train") -> Path:
    for c in classes:
        (root / split / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("L", (8, 8), 40 * i + 10).save(root / split / c / f"{i}.png")
    return root


# -- case 5: the dataset index ---------------------------------------------------------

def _tamper(index_file: Path, extra: list) -> None:
    """Append ``extra`` relative paths (label 0) to a saved index, leaving its meta."""
    with np.load(index_file) as data:
        arrays = {k: data[k] for k in data.files}
    blob = bytes(arrays["blob"])
    ends, labels, label_ends = (list(arrays[k]) for k in ("ends", "labels", "label_ends"))
    for rel in extra:
        blob += rel.encode()
        ends.append(len(blob))
        labels.append(0)
        label_ends.append(len(labels))
    arrays.update(blob=np.frombuffer(blob, np.uint8), ends=np.array(ends, np.int64),
                  labels=np.array(labels, np.int32), label_ends=np.array(label_ends, np.int64))
    with open(index_file, "wb") as handle:
        np.savez(handle, **arrays)


def _embedded_paths(prefix: Path) -> list:
    lines = Path(f"{prefix}.index.csv").read_text().splitlines()
    root = lines[0][len("# root: "):]
    return [os.path.normpath(os.path.join(root, line.split(",")[1])) for line in lines[2:]]


def test_an_edited_index_is_listed_again_and_never_leaves_the_split(tmp_path, mnist_tree,
                                                                    caplog):
    from hpt_hpc.data.index import Listing, index_paths, save_index
    from hpt_hpc.data.table import TableBuilder
    data, other = small_tree(tmp_path / "data", split="val"), \
        small_tree(tmp_path / "other", split="val")
    assert run("data", "index", data, "--split", "val").exit_code == 0
    index_file = index_paths(str(data / "val"))[0]
    assert index_file == data / ".val.hpt-index.npz" and index_file.exists()
    foreign = other / "val" / "0" / "0.png"
    _tamper(index_file, ["../../../../../../../../etc/passwd",
                         os.path.relpath(foreign, data / "val")])
    config = write_tiny_config(tmp_path, {"d": data}, {})
    caplog.set_level("WARNING")
    out = run("embed", "--config", config, "--dataset", "d", "--split", "val",
              "--out", tmp_path / "emb" / "v")
    assert out.exit_code == 0, out.output
    paths = _embedded_paths(tmp_path / "emb" / "v")
    assert len(paths) == 6 and all(p.startswith(str(data / "val")) for p in paths), paths
    assert "does not match" in caplog.text and str(index_file) in caplog.text

    # a forged index whose digest matches: entries outside the split are still refused
    for forged in (os.path.relpath(foreign, data / "val"), "/etc/passwd"):
        builder = TableBuilder(str(data / "val"))
        builder.add_raw(forged.encode(), (0,))
        listing = Listing(builder.table(), ["0", "1"], [], [], 0)
        save_index(str(data / "val"), "imagefolder", listing)
        caplog.clear()
        out = run("data", "stats", data, "--split", "val", "--channels", "1")
        assert out.exit_code == 0 and "# 6 images" in out.output, out.output
        assert f"lists {os.path.join(data / 'val', forged)}, outside" in caplog.text
    out = run("embed", "--config", config, "--dataset", "d", "--split", "val",
              "--out", tmp_path / "emb" / "w")
    assert out.exit_code == 0, out.output
    assert sorted(_embedded_paths(tmp_path / "emb" / "w")) == sorted(paths)


# -- cases 10 and 27: what one decode may cost -------------------------------------------

# VmHWM, the peak of this process's own memory: ru_maxrss would start from the parent's
# (Linux keeps it across the exec of a vfork()ed child, and pytest may hold a GB)
_PEAK = ("import re, sys\nfrom hpt_hpc.cli.main import cli\ntry:\n"
         "    cli(sys.argv[1:])\nexcept SystemExit as exc:\n    code = exc.code\n"
         "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
         "print('peak', hwm, file=sys.stderr)\nsys.exit(code)\n")


def _max_rss_mib(args) -> tuple:
    """Run the CLI in a child; (its output, its peak resident memory in MiB)."""
    out = subprocess.run([sys.executable, "-c", _PEAK, *map(str, args)],
                         capture_output=True, text=True, timeout=300)
    peaks = [line.split()[1] for line in out.stderr.splitlines() if line.startswith("peak ")]
    assert peaks, out.stderr
    return out, int(peaks[-1]) / 1024


def test_every_page_of_a_tiff_counts_and_it_is_refused_from_the_header(tmp_path):
    import tifffile
    tree = tmp_path / "tiff"
    (tree / "train" / "a").mkdir(parents=True)
    page = np.zeros((1000, 1000), np.uint8)
    with tifffile.TiffWriter(tree / "train" / "a" / "pages.tif") as tif:
        for _ in range(600):  # 600 MB decoded (2.4 GB as float32) from a small file
            tif.write(page, compression="zlib", contiguous=False)
    tifffile.imwrite(tree / "train" / "a" / "ok.tif", np.zeros((16, 16, 4), np.uint8),
                     photometric="rgb", extrasamples=["unassalpha"])
    assert (tree / "train" / "a" / "pages.tif").stat().st_size < 5_000_000
    out, peak = _max_rss_mib(["data", "check", tree, "--channels", "4"])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "pages.tif" in out.stdout and "exceed data.max_pixels" in out.stdout, out.stdout
    assert "1/2 readable" in out.stdout
    assert peak < 850, f"data check peaked at {peak:.0f} MiB"  # torch ~550, decoding >1100


def test_the_default_limit_refuses_a_large_rgba_png(tmp_path):
    tree = tmp_path / "png"
    (tree / "train" / "a").mkdir(parents=True)
    Image.new("RGBA", (7000, 7000), (0, 0, 0, 0)).save(tree / "train" / "a" / "big.png")
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(tree / "train" / "a" / "small.png")
    out = run("data", "check", tree)
    assert out.exit_code == 0, out.output
    assert "big.png" in out.output and "exceed data.max_pixels" in out.output, out.output
    assert "1/2 readable" in out.output


def test_the_tutorial_datasets_are_far_below_the_default_limit(mnist_tree):
    from hpt_hpc.config.schema import DataConfig
    side = 28  # MNIST/Fashion-MNIST; the quickstart and tutorials use these
    assert 100 * side * side * 3 * 4 < DataConfig().max_pixels <= 256 * 2 ** 20 // 4
    out = run("data", "check", mnist_tree, "--channels", "1")
    assert out.exit_code == 0 and "status: OK" in out.output, out.output


# -- case 24: symlink loops ---------------------------------------------------------------

def test_symlink_loops_are_walked_once(tmp_path, mnist_tree):
    tree = tmp_path / "loops"
    small_tree(tree)
    shutil.copytree(tree / "train", tree / "val")
    os.symlink(".", tree / "train" / "again")
    os.symlink("..", tree / "train" / "0" / "up")
    os.symlink(tree / "train" / "1", tree / "val" / "1b")  # a symlinked class: followed
    out = run("data", "check", tree, "--channels", "1")
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output
    assert "train: 6/6 readable images, 2 classes" in out.output, out.output
    assert "val: 9/9 readable images, 3 classes" in out.output, out.output
    assert "non-image files (ignored) (2)" in out.output  # again/ and 0/up are named
    out = run("data", "check", tree / "train", "--format", "folder", "--channels", "1")
    assert out.exit_code == 0 and "6/6 readable" in out.output, out.output
    stages = {"target": {"dataset": "d", "variant": "scratch", "iterations": 2}}
    config = write_tiny_config(tmp_path, {"d": tree}, stages,
                               optim={"lr": 0.05, "batch_size": 4, "iterations": 2,
                                      "weight_decay": 1e-4})
    out = run("train", "--config", config)
    assert out.exit_code == 0 and "Traceback" not in out.output, out.output


# -- case 18: non-finite pixels -----------------------------------------------------------

def test_nan_pixels_are_unreadable(tmp_path, caplog):
    import tifffile
    tree = tmp_path / "float"
    (tree / "train" / "a").mkdir(parents=True)
    good = np.full((2, 8, 8), 0.5, np.float32)
    bad = good.copy()
    bad[1, 3, 3] = np.nan
    tifffile.imwrite(tree / "train" / "a" / "good.tif", good)
    tifffile.imwrite(tree / "train" / "a" / "nan.tif", bad)
    Image.fromarray(np.where(np.eye(8) > 0, np.inf, 0.5).astype(np.float32), mode="F").save(
        tree / "train" / "a" / "inf-grey.tif")
    out = run("data", "check", tree, "--channels", "2")
    assert out.exit_code == 0, out.output
    assert "nan.tif: non-finite pixel values" in out.output, out.output
    out = run("data", "check", tree, "--channels", "1")
    assert "inf-grey.tif: non-finite pixel values" in out.output, out.output
    out = run("data", "stats", tree, "--channels", "2")
    assert out.exit_code == 0, out.output
    assert "mean: [0.5, 0.5]" in out.output and "std: [0.0, 0.0]" in out.output, out.output
    assert "2 unreadable skipped" in out.output  # nan.tif, and inf-grey.tif (1 band)

    # training (grey) skips it like any unreadable image, instead of reading it as zeros
    for i in range(7):
        Image.new("L", (8, 8), 30 * i).save(tree / "train" / "a" / f"{i}.png")
    stages = {"target": {"dataset": "d", "variant": "scratch", "iterations": 2}}
    config = write_tiny_config(tmp_path, {"d": tree}, stages,
                               optim={"lr": 0.05, "batch_size": 8, "iterations": 2,
                                      "weight_decay": 1e-4})
    caplog.set_level("WARNING")
    out = run("train", "--config", config)
    assert out.exit_code == 0, out.output
    assert "inf-grey.tif (non-finite pixel values" in caplog.text, caplog.text


# -- case 17: a read-only dataset ---------------------------------------------------------

def test_index_of_a_read_only_dataset_goes_to_the_cache(tmp_path):
    tree = small_tree(tmp_path / "ro")
    flat = tree / "train" / "0"  # format folder: the folder is its own split
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).parent.parent),
                                                        os.environ.get("PYTHONPATH")])))
    cache = str(tmp_path / "cache" / "hpt-hpc" / "index")
    for args in (["data", "index", tree], ["data", "index", flat, "--format", "folder"],
                 ["data", "check", tree, "--channels", "1"]):
        out = cli_in_mounts(args, [read_only(tree)], env=env)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stdout + out.stderr
        assert cache in out.stdout, out.stdout
    assert not list(tree.rglob(".*hpt-index*"))


# -- cases 25 and 26: file lists and empty statistics -------------------------------------

def test_a_latin1_file_list_is_one_line(tmp_path, mnist_tree):
    data = tmp_path / "list"
    small_tree(data, split="images")
    (data / "train.csv").write_bytes("images/0/0.png,0\n# caf\xe9\nimages/1/0.png,1\n"
                                     .encode("latin-1"))
    before = (data / "train.csv").read_bytes()
    out = run("data", "check", data, "--format", "filelist", "--channels", "1")
    line = assert_user_error(out, str(data / "train.csv"))
    assert "byte 22" in line and "UTF-8" in line
    stages = {"target": {"dataset": "d", "variant": "scratch", "iterations": 2}}
    config = write_tiny_config(tmp_path, {"d": data}, stages)
    import yaml
    raw = yaml.safe_load(config.read_text())
    raw["datasets"]["d"]["format"] = "filelist"
    config.write_text(yaml.safe_dump(raw))
    out = run("train", "--config", config)
    assert_user_error(out, "byte 22")
    assert (data / "train.csv").read_bytes() == before


def test_stats_without_a_readable_image_is_one_line(tmp_path):
    tree = tmp_path / "broken"
    (tree / "train" / "a").mkdir(parents=True)
    (tree / "train" / "a" / "x.png").write_bytes(b"not a png")
    out = run("data", "stats", tree)
    assert_user_error(out, "no readable image")


def test_skipped_images_are_all_counted_and_the_first_twenty_named(caplog):
    """A split with many unreadable images (a truncated shard loses thousands): every one
    is counted once, the log names the first 20 and then says the rest are counted."""
    import logging

    from hpt_hpc.data.dataset import SkippedImages
    skipped = SkippedImages()
    with caplog.at_level(logging.WARNING):
        for batch in range(5):
            skipped.add([(f"img{i}.png", "cut") for i in range(batch * 10, batch * 10 + 12)])
    assert skipped.count == 52  # img0..img51; the overlapping pairs counted once
    named = [r.getMessage() for r in caplog.records if "skipping unreadable" in r.getMessage()]
    assert len(named) == 20 and "img0.png" in named[0] and "img19.png" in named[-1]
    assert sum("counted in skipped_images, not named" in r.getMessage()
               for r in caplog.records) == 1
