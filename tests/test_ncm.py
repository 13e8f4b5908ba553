"""The nearest-class-mean probe mode (`--mode ncm`) against an independent NumPy
computation: class means of L2-normalised training features, cosine similarity, argmax;
through the CLI on real MNIST features; multi-label data refused in one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import DatasetConfig, load_config
from hpt_hpc.data import list_split
from hpt_hpc.eval.ncm import ncm_probe
from hpt_hpc.eval.probe import Features
from tiny import tiny_config_data, write_tiny_config


def _numpy_ncm(train_x, train_y, query_x, classes):
    """Predicted class per query, float64 NumPy (-inf for a class without images)."""
    unit = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    sims = np.full((len(query_x), classes), -np.inf)
    q = query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
    for c in range(classes):
        if (train_y == c).any():
            mean = unit[train_y == c].mean(0)
            sims[:, c] = q @ (mean / np.linalg.norm(mean))
    return sims.argmax(1)


def test_ncm_equals_numpy_and_an_empty_class_never_wins():
    gen = np.random.default_rng(0)
    x = gen.normal(size=(300, 16)).astype(np.float32) + 0.3 * np.eye(16)[gen.integers(0, 5, 300)]
    y = gen.integers(0, 5, 300)
    y[y == 3] = 4  # class 3 has no training image
    qx = gen.normal(size=(120, 16)).astype(np.float32)
    qy = gen.integers(0, 6, 120)  # class 5: test only
    train = Features(torch.from_numpy(x), torch.from_numpy(y))
    test = Features(torch.from_numpy(qx), torch.from_numpy(qy))
    trial = ncm_probe(train, test, test)
    expected = _numpy_ncm(x.astype(np.float64), y, qx.astype(np.float64), 6)
    assert not np.isin(expected, [3, 5]).any()
    np.testing.assert_array_equal(trial.predictions, expected)
    assert trial.score == trial.val_score == pytest.approx((expected == qy).mean(), abs=1e-6)
    assert (trial.mode, trial.metric, trial.best_step) == ("ncm", "top1", 0)


def test_the_cli_ncm_line_and_record_equal_numpy(tmp_path, mnist_tree, monkeypatch):
    from hpt_hpc.eval.runner import seeded_backbone, split_features
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})
    cfg = load_config(str(config))
    feats = split_features(cfg, "mnist", seeded_backbone(cfg, None), torch.device("cpu"))
    top1 = {}
    for split in ("val", "test"):
        predicted = _numpy_ncm(feats["train"].x.double().numpy(), feats["train"].y.numpy(),
                               feats[split].x.double().numpy(), 10)
        top1[split] = (predicted == feats[split].y.numpy()).mean()
    assert 0.3 < top1["test"] < 1.0  # a random backbone still clusters digits, imperfectly
    out = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                   "--mode", "ncm", "--set", "probe.repeats=3"])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[-1] == (f"mnist: NCM test top1 {100 * top1['test']:.2f} %, "
                                            f"val {100 * top1['val']:.2f} %")
    assert "seed " not in out.output  # a vote: nothing trained, nothing repeated
    (result,) = (tmp_path / "out" / "evaluations").glob("*.json")
    record = json.loads(result.read_text())
    assert (record["mode"], record["repeats"], record["best_step"]) == ("ncm", 1, 0)
    assert record["score"] == pytest.approx(top1["test"], abs=1e-6)  # float32 top1
    assert record["per_repeat"] == [record["score"]]
    help_text = CliRunner().invoke(cli, ["probe", "--help"]).output
    assert "ncm: nearest class mean" in " ".join(help_text.split())


def test_ncm_refuses_multi_label_data_in_one_line(tmp_path, mnist_tree):
    lists = tmp_path / "lists"
    lists.mkdir()
    for split in ("train", "val", "test"):
        records, _ = list_split(DatasetConfig(path=str(mnist_tree)), split)
        rows = [f"{r.path},{r.labels[0]},{10 + r.labels[0] % 2}" for r in records]
        (lists / f"{split}.csv").write_text("path,label,label\n" + "\n".join(rows) + "\n")
    data = tiny_config_data(tmp_path / "out", {}, {})
    data["datasets"]["digits"] = {"path": str(lists), "format": "filelist"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    out = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "digits",
                                   "--mode", "ncm"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert out.output.strip().splitlines() == [
        "error: probe mode ncm needs one label per image, but dataset 'digits' is "
        "multi-label; use probe.mode knn or cached (--mode)"]
    assert not (tmp_path / "out" / "evaluations").exists() or \
        not list((tmp_path / "out" / "evaluations").glob("*.json"))
