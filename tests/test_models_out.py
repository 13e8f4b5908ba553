"""A trained backbone out of the toolkit: export to torchvision/MoCo layouts, features of a
split to disk, and the kNN evaluation — through the real CLI, on real images."""
from __future__ import annotations

import csv

import numpy as np
import torch
import torchvision
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import config_to_dict, load_config
from hpt_hpc.eval.knn import knn_scores
from hpt_hpc.eval.probe import Features
from hpt_hpc.eval.runner import backbone_from_checkpoint
from hpt_hpc.models import feature_dim_for, save_checkpoint_atomic, stage_checkpoint
from hpt_hpc.ssl import MoCo, load_initial_weights
from tiny import tiny_config, write_tiny_config

RGB = {"model": {"arch": "resnet18", "width": 1.0, "small_stem": False, "in_channels": 3},
       "data": {"image_size": 32, "channels": 3, "mean": [0.5, 0.5, 0.5],
                "std": [0.5, 0.5, 0.5], "workers": 0}}


def trained_checkpoint(tmp_path):
    """A toolkit checkpoint of a stock ResNet-18 with non-trivial BN statistics."""
    cfg = tiny_config(tmp_path / "out", {}, {}, **RGB)
    torch.manual_seed(0)
    model = MoCo.from_config(cfg.model, cfg.moco, queue_size=8)
    with torch.no_grad():
        for module in model.encoder_q.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "final.pt"
    save_checkpoint_atomic(stage_checkpoint(model, None, 1, 1, "target", "full", None,
                                            config_to_dict(cfg), {}, None), path)
    return cfg, path


def test_export_loads_strictly_into_torchvision_and_matches(tmp_path):
    cfg, path = trained_checkpoint(tmp_path)
    out = CliRunner().invoke(cli, ["export", str(path), "--format", "torchvision",
                                   "--out", str(tmp_path / "tv.pt")])
    assert out.exit_code == 0, out.output
    reference = torchvision.models.resnet18()
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(torch.load(tmp_path / "tv.pt", weights_only=True), strict=True)
    ours = backbone_from_checkpoint(cfg, str(path))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(reference.eval()(images), ours.eval()(images), atol=1e-5)
    moco = CliRunner().invoke(cli, ["export", str(path), "--format", "moco",
                                    "--out", str(tmp_path / "moco.pt")])
    assert moco.exit_code == 0, moco.output
    again = MoCo.from_config(cfg.model, cfg.moco, queue_size=8)
    assert load_initial_weights(again, str(tmp_path / "moco.pt"))["layout"] == "moco"
    assert torch.equal(again.encoder_q.layer1[0].conv1.weight,
                       ours.layer1[0].conv1.weight)
    foreign = tmp_path / "foreign.pt"
    torch.save(reference.state_dict(), foreign)
    bad = CliRunner().invoke(cli, ["export", str(foreign), "--out", str(tmp_path / "x.pt")])
    assert bad.exit_code == 2 and "is not an hpt-hpc checkpoint" in bad.output


def test_stock_resnet_as_safetensors_and_no_timm_layout(tmp_path):
    """The torchvision layout in a safetensors file loads into torchvision's own class (the
    printed line says how); the timm layout is for timm models only (one line, no file)."""
    import safetensors.torch
    cfg, path = trained_checkpoint(tmp_path)
    out = CliRunner().invoke(cli, ["export", str(path), "--out", str(tmp_path / "b.safetensors")])
    assert out.exit_code == 0, out.output
    assert "load: torchvision.models.resnet18() with fc = torch.nn.Identity()" in out.output
    reference = torchvision.models.resnet18()
    reference.fc = torch.nn.Identity()
    reference.load_state_dict(safetensors.torch.load_file(tmp_path / "b.safetensors"))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(reference.eval()(images),
                              backbone_from_checkpoint(cfg, str(path)).eval()(images), atol=1e-5)
    timm_layout = CliRunner().invoke(cli, ["export", str(path), "--format", "timm",
                                           "--out", str(tmp_path / "t.pt")])
    assert timm_layout.exit_code == 2 and timm_layout.output.count("\n") == 1
    assert "--format timm needs a timm model" in timm_layout.output
    assert not (tmp_path / "t.pt").exists()


def test_embed_writes_features_and_their_index(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})
    args = ["embed", "--config", str(config), "--dataset", "mnist", "--split", "val",
            "--out", str(tmp_path / "emb" / "val")]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 0, out.output
    feats = np.load(tmp_path / "emb" / "val.npy", allow_pickle=False)
    with open(tmp_path / "emb" / "val.index.csv") as handle:
        assert handle.readline() == f"# root: {(mnist_tree / 'val').resolve()}\n"
        index = list(csv.DictReader(handle))
    model = load_config(str(config)).model
    assert feats.dtype == np.float32
    assert feats.shape == (len(index), feature_dim_for(model.arch, model.width))
    assert len(index) == len(list((mnist_tree / "val").rglob("*.png")))
    assert index[0]["row"] == "0" and index[0]["path"].endswith(".png")
    assert np.isfinite(feats).all() and feats.std() > 0
    CliRunner().invoke(cli, args)  # seeded random init: the same features again
    assert np.array_equal(np.load(tmp_path / "emb" / "val.npy"), feats)


def test_knn_votes_by_weighted_neighbours_and_runs_from_the_cli(tmp_path, mnist_tree):
    centres = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    train = Features(torch.cat([centres[0] + 0.05 * torch.randn(20, 2),
                                centres[1] + 0.05 * torch.randn(20, 2)]),
                     torch.tensor([0] * 20 + [1] * 20))
    queries = Features(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
    votes = knn_scores(train, queries, k=5, temperature=0.07, num_classes=2)
    assert votes.argmax(1).tolist() == [0, 1] and (votes[:, 0] > 0).tolist() == [True, False]
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree}, {})
    out = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                   "--mode", "knn", "--set", "probe.knn_k=5"])
    assert out.exit_code == 0, out.output
    accuracy = float(out.output.split("mnist: kNN (k=5) test top1 ")[1].split(" %")[0])
    assert accuracy > 20.0  # far above chance (10 %) even on a random backbone's features


def test_evaluations_accept_stage_references(tmp_path, mnist_tree):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    assert CliRunner().invoke(cli, ["train", "--config", str(config)]).exit_code == 0
    probe = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                     "--checkpoint", "stage:target"])
    assert probe.exit_code == 0, probe.output
    record = next((tmp_path / "out" / "evaluations").glob("probe-mnist-*.json"))
    assert '"checkpoint": "stage:target"' in record.read_text()
    assert record.with_suffix(".npz").is_file()  # its per-image predictions beside it
    missing = CliRunner().invoke(cli, ["probe", "--config", str(config), "--dataset", "mnist",
                                       "--checkpoint", "stage:base"])
    assert missing.exit_code == 2 and "has no final checkpoint" in missing.output
