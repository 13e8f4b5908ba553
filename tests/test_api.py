"""The Python API (hpt_hpc.load_backbone / embed / results) against the real objects: a
tiny trained stage, its export files, the CLI's embed and the report's CSV."""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

import hpt_hpc
from hpt_hpc.cli.main import cli
from hpt_hpc.config import StageLayout, config_digest, load_config
from hpt_hpc.errors import HptError
from hpt_hpc.models.export import export_meta_of
from hpt_hpc.eval.runner import backbone_from_checkpoint
from hpt_hpc.models import load_checkpoint
from hpt_hpc.ssl import MoCo, load_initial_weights
from hpt_hpc.models.export import meta_from_strings, meta_to_strings
from tiny import write_tiny_config, write_tiny_experiment


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_tree):
    """A 2-step target stage (through `hpt-hpc train`) and its config."""
    folder = tmp_path_factory.mktemp("api")
    config = write_tiny_config(folder, {"mnist": mnist_tree},
                               {"target": {"dataset": "mnist", "iterations": 2}})
    out = CliRunner().invoke(cli, ["train", "--config", str(config)])
    assert out.exit_code == 0, out.output
    return folder, config, StageLayout(folder / "out", "target").final


def _features(model, images):
    with torch.no_grad():
        return model.eval()(images)


def test_export_carries_preprocessing_and_provenance_and_loads_back(trained, mnist_tree):
    folder, config, final = trained
    cfg = load_config(config)
    images = torch.stack([hpt_hpc.load_backbone(str(final)).preprocess(p) for p in
                          sorted((mnist_tree / "test").rglob("*.png"))[:8]])
    reference = _features(backbone_from_checkpoint(cfg, str(final)), images)
    for fmt in ("torchvision", "moco"):
        path = folder / f"{fmt}.pt"
        out = CliRunner().invoke(cli, ["export", str(final), "--format", fmt,
                                       "--out", str(path)])
        assert out.exit_code == 0, out.output
        assert "input 16x16, 1 channel(s), short side resized to 18" in out.output
        meta = export_meta_of(torch.load(path, weights_only=True))
        assert meta["preprocessing"] == {
            "input_size": 16, "resize": round(16 / 0.875), "center_crop_ratio": 0.875,
            "channels": 1, "mean": [0.5], "std": [0.5], "interpolation": "bilinear"}
        saved = load_checkpoint(str(final))
        assert meta["provenance"]["config_digest"] == config_digest(saved["config"])
        assert {k: meta["provenance"][k] for k in ("stage", "variant", "method", "steps",
                                                  "dataset")} == {  # from scratch: Target
            "stage": "target", "variant": "full", "method": "Target", "steps": 2,
            "dataset": "mnist"}
        assert meta["model"]["feature_dim"] == reference.shape[1]
        assert meta_from_strings(meta_to_strings(meta)) == meta  # as safetensors metadata
        assert all(isinstance(v, str) for v in meta_to_strings(meta).values())
        backbone = hpt_hpc.load_backbone(path)
        assert isinstance(backbone.model, torch.nn.Module) and not backbone.model.training
        start = MoCo.from_config(cfg.model, cfg.moco, queue_size=8)  # an init: still works
        load_initial_weights(start, str(path))
        start.encoder_q.fc = torch.nn.Identity()
        assert torch.allclose(_features(start.encoder_q, images), reference, atol=1e-6)
        assert torch.allclose(_features(backbone.model, images), reference, atol=1e-6)
    from_checkpoint = hpt_hpc.load_backbone(final)
    assert torch.allclose(_features(from_checkpoint.model, images), reference, atol=1e-6)
    assert from_checkpoint.preprocess.values == backbone.preprocess.values
    staged = hpt_hpc.load_backbone("stage:target", config=config)
    assert torch.allclose(_features(staged.model, images), reference, atol=1e-6)


def test_preprocessing_is_the_evaluation_test_view(trained, mnist_tree):
    """A PIL image and its file give the tensor the evaluation loader feeds the network."""
    from hpt_hpc.data import build_eval_loader
    from hpt_hpc.data.sources import ImageRecord
    _, config, final = trained
    cfg = load_config(config)
    paths = sorted((mnist_tree / "val").rglob("*.png"))[:4]
    batch, _ = next(iter(build_eval_loader([ImageRecord(str(p), ()) for p in paths],
                                           cfg.data, batch_size=4, probe=cfg.probe)))
    preprocess = hpt_hpc.load_backbone(final).preprocess
    assert torch.equal(torch.stack([preprocess(p) for p in paths]), batch)
    assert torch.equal(torch.stack([preprocess(Image.open(p)) for p in paths]), batch)
    big = Image.open(paths[0]).resize((64, 40))  # larger than the input: resized to 18
    manual = torchvision.transforms.functional.resize(big, 18)
    manual = torchvision.transforms.functional.center_crop(manual, 16)
    expected = (torch.from_numpy(np.asarray(manual, np.float32) / 255.0)[None] - 0.5) / 0.5
    assert torch.allclose(preprocess(big), expected, atol=1e-6)


def test_embed_equals_the_cli_embed(trained, mnist_tree):
    folder, config, _ = trained
    out = CliRunner().invoke(cli, ["embed", "--config", str(config), "--dataset", "mnist",
                                   "--split", "val", "--checkpoint", "stage:target",
                                   "--out", str(folder / "emb" / "val")])
    assert out.exit_code == 0, out.output
    npy, index = re.search(r"wrote (\S+\.npy).* and (\S+\.csv)", out.output).groups()
    with open(index, encoding="utf-8") as handle:
        root = handle.readline().removeprefix("# root: ").rstrip("\n")
        rows = {os.path.join(root, row["path"]): int(row["row"])
                for row in csv.DictReader(handle)}
    cli_features = np.load(npy)
    features, paths = hpt_hpc.embed("stage:target", mnist_tree / "val", config=config,
                                    return_paths=True)
    assert features.dtype == np.float32 and sorted(paths) == sorted(rows)
    assert np.allclose(features, cli_features[[rows[p] for p in paths]], atol=1e-6)
    some = paths[:5]
    backbone = hpt_hpc.load_backbone("stage:target", config=config)
    in_memory = hpt_hpc.embed(backbone, [Image.open(p) for p in some])
    assert np.allclose(in_memory, cli_features[[rows[p] for p in some]], atol=1e-5)
    assert np.allclose(hpt_hpc.embed(backbone, some), in_memory, atol=1e-5)


def test_load_backbone_says_what_it_needs(trained, tmp_path):
    folder, config, final = trained
    with pytest.raises(HptError, match="needs config="):
        hpt_hpc.load_backbone("stage:target")
    with pytest.raises(HptError, match="needs a checkpoint"):
        hpt_hpc.load_backbone("")
    with pytest.raises(HptError, match="does not exist"):
        hpt_hpc.load_backbone(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save(hpt_hpc.load_backbone(final).model.state_dict(), foreign)
    with pytest.raises(HptError, match="pass config="):
        hpt_hpc.load_backbone(foreign)
    loaded = hpt_hpc.load_backbone(foreign, config=config)
    assert loaded.meta == {} and loaded.preprocess.values["input_size"] == 16
    same = CliRunner().invoke(cli, ["export", str(final), "--out", str(final)])
    assert same.exit_code == 2 and "is the checkpoint this command reads" in same.output


def test_results_are_the_report_csv(tmp_path, mnist_tree):
    experiment = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, {
        "s": {"method": ["HPT"], "dataset": ["mnist"], "steps": [2]}})
    ran = CliRunner().invoke(cli, ["sweep", str(experiment), "--executor", "debug"])
    assert ran.exit_code == 0, ran.output
    report = CliRunner().invoke(cli, ["report", str(experiment), "--from-files",
                                      "--out", str(tmp_path / "report")])
    assert report.exit_code == 0, report.output
    with open(tmp_path / "report" / "tiny-sweep.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    rows = hpt_hpc.results(experiment, as_frame=False)
    assert len(rows) == len(written) == 3  # HPT, raw pixels, random init
    assert [{k: "" if v is None else str(v) for k, v in row.items()} for row in rows] == written
    assert hpt_hpc.results(tmp_path / "out", as_frame=False) == rows
    stored = [json.loads(p.read_text()) for p in (tmp_path / "out").glob("units/*/results/*.json")]
    assert sorted((r["method"], r["score_pct"]) for r in rows) == sorted(
        (d["method"], round(100 * d["score"], 4)) for d in stored)  # percent of the files
    frame = hpt_hpc.results(experiment)
    assert list(frame.columns) == list(written[0]) and len(frame) == 3
    assert sorted(frame["method"]) == sorted(r["method"] for r in written)
    with pytest.raises(HptError, match="neither an experiment file"):
        hpt_hpc.results(tmp_path / "nothing")


def test_import_is_cheap_and_names_the_api():
    out = subprocess.run([sys.executable, "-c", "import sys, hpt_hpc; print(sorted(hpt_hpc.API)"
                          "); print('torch' in sys.modules)"], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split("\n")[1] == "False", out.stdout + out.stderr
    import hpt_hpc.api
    assert set(hpt_hpc.API) == set(hpt_hpc.api.__all__)
    assert hpt_hpc.load_backbone is hpt_hpc.api.load_backbone
    with pytest.raises(AttributeError):
        hpt_hpc.not_a_name  # noqa: B018
