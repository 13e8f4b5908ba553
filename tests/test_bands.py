"""Multi-band images (data.channels N): TIFF band stacks in every layout, scaled by their
type, counted bands checked, and the whole path (stats, pretraining, probe) through the
CLI on 5-band TIFFs made from real digits."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner
from PIL import Image

from hpt_hpc.cli.main import cli
from hpt_hpc.config import StageLayout
from hpt_hpc.data.bands import load_bands
from hpt_hpc.data.images import UnreadableImage
from hpt_hpc.plan.record import StageRecord
from tiny import write_tiny_config

BANDS = 5
MEAN, STD = [0.5] * BANDS, [0.25] * BANDS


def _stack(png) -> np.ndarray:
    """Five uint16 bands from one real digit: the digit, its negative, two shifts, a ramp."""
    digit = np.asarray(Image.open(png).convert("L"), dtype=np.uint16) * 257
    ramp = np.broadcast_to(np.linspace(0, 65535, digit.shape[1]).astype(np.uint16),
                           digit.shape)
    return np.stack([digit, 65535 - digit, np.roll(digit, 3, 0), np.roll(digit, 3, 1), ramp])


def _band_tree(mnist_tree, dest, splits=("train", "val", "test")):
    """The MNIST tree as 5-band TIFFs (planar), same classes and splits."""
    for png in mnist_tree.rglob("*.png"):
        rel = png.relative_to(mnist_tree)
        if rel.parts[0] not in splits:
            continue
        out = (dest / rel).with_suffix(".tif")
        out.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(out, _stack(png), photometric="minisblack", planarconfig="separate")
    return dest


def _config(tmp_path, datasets, stages, **extra):
    return write_tiny_config(
        tmp_path, datasets, stages,
        model={"arch": "resnet18", "width": 0.125, "small_stem": True, "stem_stride": 2,
               "in_channels": BANDS},
        data={"image_size": 16, "channels": BANDS, "mean": MEAN, "std": STD, "workers": 0},
        augment={"color_jitter": {"enabled": False}, "grayscale": {"enabled": False},
                 "flip": {"enabled": True}, "blur": {"enabled": True, "p": 1.0}}, **extra)


def test_every_tiff_layout_reads_as_scaled_bands(tmp_path, mnist_tree):
    png = next((mnist_tree / "train").rglob("*.png"))
    stack = _stack(png)
    expected = torch.from_numpy(stack.astype(np.float32) / 65535)
    layouts = {"planar.tif": dict(data=stack, planarconfig="separate"),
               "contig.tif": dict(data=np.moveaxis(stack, 0, -1), planarconfig="contig"),
               "pages.tif": dict(data=stack[:, None], planarconfig=None)}
    for name, kw in layouts.items():
        data = kw.pop("data")
        if name == "pages.tif":
            with tifffile.TiffWriter(tmp_path / name) as tif:
                for band in data:
                    tif.write(band[0], photometric="minisblack")
        else:
            tifffile.imwrite(tmp_path / name, data, photometric="minisblack", **kw)
        bands = load_bands(str(tmp_path / name), BANDS)
        assert bands.dtype == torch.float32 and torch.equal(bands, expected), name
    tifffile.imwrite(tmp_path / "byte.tif", stack[:4].astype(np.uint8), planarconfig="separate",
                     photometric="minisblack")
    assert float(load_bands(str(tmp_path / "byte.tif"), 4).max()) <= 1.0
    with pytest.raises(UnreadableImage, match="5 bands .*data.channels is 4"):
        load_bands(str(tmp_path / "planar.tif"), 4)
    with pytest.raises(UnreadableImage, match="pixels exceed data.max_pixels"):
        load_bands(str(tmp_path / "planar.tif"), BANDS, max_pixels=100)


def test_band_images_train_probe_and_measure_through_the_cli(tmp_path, mnist_tree):
    tree = _band_tree(mnist_tree, tmp_path / "bands")
    config = _config(tmp_path, {"bands": tree},
                     {"target": {"dataset": "bands", "iterations": 3}})
    trained = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert trained.exit_code == 0, trained.output
    result = StageRecord.read(StageLayout(tmp_path / "out", "target"))
    assert result.steps == 3 and not result.skipped_images, result
    probe = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "bands",
                                     "--checkpoint", "stage:target"])
    assert probe.exit_code == 0, probe.output
    accuracy = float(probe.output.split("test top1 at best val ")[1].split("%")[0])
    assert accuracy > 20.0  # far above chance on 5-band digits
    stats = CliRunner().invoke(cli, ["data", "stats", str(tree), "--channels", str(BANDS)])
    assert stats.exit_code == 0, stats.output
    means = [float(v) for v in re.search(r"mean: \[([^\]]*)\]", stats.output)[1].split(",")]
    assert len(means) == BANDS and means[0] + means[1] == pytest.approx(1.0, abs=2e-3)
    checked = CliRunner().invoke(cli, ["data", "check", str(tree), "--channels", "3"])
    assert checked.exit_code != 0 and "unreadable" in checked.output.lower()


def test_band_configs_refuse_dali_and_colour_and_foreign_images(tmp_path, mnist_tree):
    tree = _band_tree(mnist_tree, tmp_path / "bands", splits=("train",))
    config = _config(tmp_path, {"bands": tree, "digits": mnist_tree},
                     {"target": {"dataset": "digits", "iterations": 2}})
    dali = CliRunner().invoke(cli, ["config", "show", "--config", str(config),
                                    "--set", "data.backend=dali"])
    assert dali.exit_code == 2 and "bands need data.backend torchvision" in dali.output
    grey = CliRunner().invoke(cli, ["config", "show", "--config", str(config),
                                    "--set", "augment.grayscale.enabled=true"])
    assert grey.exit_code == 2 and "--set augment.grayscale.enabled=false" in grey.output
    foreign = CliRunner().invoke(cli, ["train", "--config", str(config)])  # PNG digits
    assert foreign.exit_code == 2, foreign.output
    assert "does not hold 5-band images: 1 bands" in foreign.output
    assert not (tmp_path / "out" / "target").exists()
