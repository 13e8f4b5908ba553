"""The kNN vote at the edges: small temperatures (exp(similarity / T) overflows float32
below T = 1/88.7) give the vote computed independently in float64, on separable data
100 %, for one label per image and for multi-label data (AUROC against scikit-learn)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from sklearn.metrics import roc_auc_score

from hpt_hpc.cli.main import cli
from hpt_hpc.config import load_config
from hpt_hpc.eval.knn import knn_probe, knn_scores
from hpt_hpc.eval.probe import Features
from tiny import write_tiny_config

TEMPERATURES = [0.07, 0.01, 0.005, 0.002]


def _share(train_x, train_y, query_x, k, temperature):
    """Each class's share of the weighted vote, in float64 NumPy (labels multi-hot)."""
    bank = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    q = query_x / np.linalg.norm(query_x, axis=1, keepdims=True)
    sims = q @ bank.T
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(q), train_y.shape[1]))
    for i, row in enumerate(top):
        weights = np.exp(sims[i, row] / temperature)  # float64: finite down to T ~ 0.0014
        assert np.all(np.isfinite(weights))
        votes[i] = (weights[:, None] * train_y[row]).sum(0) / weights.sum()
        votes[i][train_y[row].min(0) == 1] = 1.0  # every neighbour has the label: exactly 1
    return votes


def _clusters(seed, n, classes=4, dim=8):
    gen = np.random.default_rng(seed)
    centres = np.eye(dim)[:classes] * 5
    y = gen.integers(0, classes, n)
    return (centres[y] + gen.normal(0, 0.5, (n, dim))).astype(np.float32), y


@pytest.mark.parametrize("temperature", TEMPERATURES + [1e-4])
def test_a_separable_set_scores_100_at_every_temperature(temperature):
    x, y = _clusters(0, 200)
    qx, qy = _clusters(1, 60)
    train = Features(torch.from_numpy(x), torch.from_numpy(y))
    val = test = Features(torch.from_numpy(qx), torch.from_numpy(qy))
    result = knn_probe(train, val, test, 20, temperature)
    assert result.score == result.val_score == 1.0


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_multi_label_auroc_equals_float64_and_scikit_learn(temperature):
    gen = np.random.default_rng(3)
    x = gen.normal(size=(120, 6)).astype(np.float32)
    y = (x[:, :3] + gen.normal(0, 1.0, (120, 3)) > 0).astype(np.float32)  # noisy: ranks matter
    qx = gen.normal(size=(80, 6)).astype(np.float32)
    qy = (qx[:, :3] + gen.normal(0, 1.0, (80, 3)) > 0).astype(np.float32)
    train = Features(torch.from_numpy(x), torch.from_numpy(y))
    test = Features(torch.from_numpy(qx), torch.from_numpy(qy))
    result = knn_probe(train, test, test, 10, temperature)
    shares = _share(x.astype(np.float64), y, qx.astype(np.float64), 10, temperature)
    ours = knn_scores(train, test, 10, temperature, 3).numpy()
    # every share is the float64 one to rounding, the tiny ones (1e-80 at T=0.002) too
    np.testing.assert_allclose(ours, shares, rtol=1e-9, atol=0)
    auroc = np.mean([roc_auc_score(qy[:, c], ours[:, c]) for c in range(3)])
    assert result.score == pytest.approx(auroc, abs=1e-12)
    # shares a hair (1e-16) below 1 may swap a pair against the reference's exact ones
    expected = np.mean([roc_auc_score(qy[:, c], shares[:, c]) for c in range(3)])
    assert result.score == pytest.approx(expected, abs=1e-3)
    assert 0.55 < expected < 0.99  # not a degenerate all-ties score
    if temperature < 0.07:
        return  # below, float16 predictions round the smallest shares to 0 (ties)
    # the stored predictions (float16 shares) give the score back
    stored = result.predictions.astype(np.float64)
    assert np.allclose(stored, shares, atol=1e-3)
    assert np.mean([roc_auc_score(qy[:, c], stored[:, c]) for c in range(3)]) == \
        pytest.approx(expected, abs=0.01)


def test_the_cli_vote_at_small_temperatures_equals_float64(tmp_path, mnist_tree, monkeypatch):
    from hpt_hpc.eval.runner import seeded_backbone, split_features
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})
    cfg = load_config(str(config))
    feats = split_features(cfg, "mnist", seeded_backbone(cfg, None), torch.device("cpu"))
    onehot = np.eye(10)[feats["train"].y.numpy()]
    for temperature in (0.005, 0.002):
        out = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                       "--mode", "knn", "--set", "probe.knn_k=5", "--set",
                                       f"probe.knn_temperature={temperature}"])
        assert out.exit_code == 0, out.output
        shares = {s: _share(feats["train"].x.double().numpy(), onehot,
                            feats[s].x.double().numpy(), 5, temperature) for s in ("test", "val")}
        top1 = {s: (shares[s].argmax(1) == feats[s].y.numpy()).mean() for s in shares}
        assert top1["test"] > 0.3  # a random backbone still clusters digits
        assert out.output.splitlines()[-1] == (
            f"mnist: kNN (k=5) test top1 {100 * top1['test']:.2f} %, "
            f"val {100 * top1['val']:.2f} %")
    last = max((tmp_path / "out" / "evaluations").glob("*.json"),
               key=lambda p: p.stat().st_mtime_ns)  # the T=0.002 probe's (written last)
    record = json.loads(last.read_text())
    assert record["score"] == pytest.approx(top1["test"])
