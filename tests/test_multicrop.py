"""Multi-crop (#25): ``augment.local_crops`` in the config, the transform spec, both data
backends and the engine. Views come as 2 global views (``data.image_size``, augment.crop)
then ``number`` local views (``local_crops.size``, ``local_crops.scale``)."""
from __future__ import annotations

import pytest
import yaml

from tiny import write_tiny_config
from usererror import assert_user_error, clear_tracking_env, run

STAGES = {"target": {"dataset": "mnist", "variant": "scratch", "iterations": 4}}


@pytest.fixture(autouse=True)
def _no_tracking_env(monkeypatch):
    clear_tracking_env(monkeypatch)


@pytest.mark.parametrize("setting, text", [
    ("augment.local_crops.size=17", "augment.local_crops.size: 17 is larger than "
                                    "data.image_size 16"),
    ("augment.local_crops.scale=[0.5,0.1]", "augment.local_crops.scale: [0.5, 0.1] must be"),
    ("augment.local_crops.scale=[0,0.4]", "0 < low <= high <= 1"),
    ("augment.local_crops.scale=[0.1,1.5]", "0 < low <= high <= 1"),
    ("augment.local_crops.scale=[0.1]", "must be [low, high]"),
    ("augment.local_crops.number=-1", "augment.local_crops.number: -1 is outside its range"),
    ("augment.local_crops.size=0", "augment.local_crops.size: 0 is outside its range"),
])
def test_bad_local_crops_are_refused_in_one_line(tmp_path, mnist_tree, setting, text):
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES)
    assert_user_error(run("config", "show", "--config", cfg, "--set", setting), text)
    assert not (tmp_path / "out").exists()


def test_local_crops_defaults_and_limits_are_accepted(tmp_path, mnist_tree):
    """The defaults (no local views) and the edge values (size = image_size, a one-point
    area range, scale high 1) are valid and shown as set."""
    cfg = write_tiny_config(tmp_path, {"mnist": mnist_tree}, STAGES)
    shown = run("config", "show", "--config", cfg)
    assert shown.exit_code == 0, shown.output
    assert yaml.safe_load(shown.output)["augment"]["local_crops"] == \
        {"number": 0, "size": None, "scale": [0.05, 0.4]}
    edge = run("config", "show", "--config", cfg, "--set", "augment.local_crops.number=3",
               "--set", "augment.local_crops.size=16", "--set",
               "augment.local_crops.scale=[1,1]")
    assert edge.exit_code == 0, edge.output
    assert yaml.safe_load(edge.output)["augment"]["local_crops"] == \
        {"number": 3, "size": 16, "scale": [1, 1]}
