"""Evaluations, embed and data commands on tar shards (#28). The shards are packed from a
copy of the dataset that is then deleted, so every image must come from the tars."""
import csv
import re
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from tiny import write_tiny_config


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def packed_only(tmp_path_factory, mnist_tree):
    """Shards of MNIST whose source images no longer exist."""
    root = tmp_path_factory.mktemp("packed")
    shutil.copytree(mnist_tree, root / "gone")
    out = _invoke("data", "shard", root / "gone", root / "shards", "--shard-size", "40k")
    assert out.exit_code == 0, out.output
    shutil.rmtree(root / "gone")
    return root / "shards"


def _config(folder, packed, mnist_tree, **data):
    config = write_tiny_config(folder, {"packed": packed, "tree": mnist_tree},
                               {"target": {"dataset": "tree", "variant": "scratch"}},
                               **({"data": data} if data else {}))
    text = config.read_text().replace(f"path: {packed}", f"path: {packed}\n    format: shards")
    config.write_text(text)
    return config


def _embedding(folder, config, dataset):
    out = _invoke("embed", "--config", config, "--dataset", dataset, "--split", "val",
                  "--out", folder / f"emb-{dataset}")
    assert out.exit_code == 0, out.output
    npy, index = re.search(r"wrote (\S+\.npy).* and (\S+\.csv)", out.output).groups()
    with open(index, encoding="utf-8") as handle:
        handle.readline()
        rows = {row["path"]: (int(row["row"]), row["labels"]) for row in csv.DictReader(handle)}
    return np.load(npy), rows


@pytest.mark.parametrize("backend", ["torchvision", "dali"])
def test_embed_on_shards_gives_every_image_its_own_features_under_its_key(
        tmp_path, packed_only, mnist_tree, backend):
    config = _config(tmp_path, packed_only, mnist_tree, backend=backend, device="cpu",
                     image_size=16, channels=1, mean=[0.5], std=[0.5], workers=2)
    packed, packed_rows = _embedding(tmp_path, config, "packed")
    tree, tree_rows = _embedding(tmp_path, config, "tree")
    assert sorted(packed_rows) == sorted(tree_rows) and len(packed) == len(tree) == 200
    for key, (row, labels) in packed_rows.items():  # same image, same random backbone
        assert labels == tree_rows[key][1]
        assert np.allclose(packed[row], tree[tree_rows[key][0]], atol=1e-5), key


def test_a_knn_probe_on_shards_scores_as_on_the_image_folder(tmp_path, packed_only,
                                                            mnist_tree):
    config = _config(tmp_path, packed_only, mnist_tree)
    scores = []
    for dataset in ("packed", "tree"):
        out = _invoke("probe", "--config", config, "--dataset", dataset, "--mode", "knn")
        assert out.exit_code == 0, out.output
        scores.append(re.search(r"test top1 (\d+\.\d+) %, val (\d+\.\d+) %",
                                out.output).groups())
    assert scores[0] == scores[1]  # the same images, whatever their order


def test_finetune_and_label_budgets_read_their_subset_from_the_shards(tmp_path, packed_only,
                                                                      mnist_tree):
    config = _config(tmp_path, packed_only, mnist_tree)
    out = _invoke("finetune", "--config", config, "--dataset", "packed", "--set",
                  "finetune.labels=20", "--set", "finetune.iterations=3")
    assert out.exit_code == 0, out.output
    assert "skipp" not in out.output.lower()
