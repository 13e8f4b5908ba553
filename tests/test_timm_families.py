"""timm backbones end to end, one family at a time (a ResNet-50 and a ViT-S/16 on 1-channel
images, a ConvNeXt on 5-band images, all at tiny input sizes): a stage through `hpt-hpc
train`, a probe, exports in every layout and file kind loaded strictly by timm / torchvision
and by `hpt_hpc.load_backbone`, `hpt-hpc embed`, and a sweep of Base and HPT."""
from __future__ import annotations

import csv
import logging
import re

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import torchvision
from click.testing import CliRunner
from safetensors import safe_open

import hpt_hpc
from hpt_hpc.cli.main import cli
from hpt_hpc.config import OutputLayout, StageLayout, config_digest, load_config
from hpt_hpc.data import build_eval_loader
from hpt_hpc.data.sources import ImageRecord
from hpt_hpc.eval.runner import backbone_from_checkpoint
from hpt_hpc.models import load_checkpoint
from hpt_hpc.models.export import meta_from_strings
from test_bands import MEAN, STD, _band_tree
from tiny import TIMM_FAMILIES, write_tiny_config, write_tiny_experiment

# How timm builds each tiny backbone, written out here (not read from an export's meta).
TIMM_ARGS = {
    "resnet50": ("resnet50", {"num_classes": 0, "in_chans": 1}),
    "vit-s16": ("vit_small_patch16_224", {"num_classes": 0, "in_chans": 1, "patch_size": 4,
                                          "depth": 2, "img_size": 16}),
}
CHANCE = 10.0  # ten digit classes
PER_CLASS = 8  # images per class and split: 80 per split
ONE_SAVE = {"checkpoint": {"every": 1000}}  # a ResNet-50 MoCo checkpoint is 330 MB


@pytest.fixture(scope="module")
def digits(mnist_tree, tmp_path_factory):
    """A smaller tree of the same real digits (links), the same classes and splits."""
    root = tmp_path_factory.mktemp("digits")
    for folder in sorted(p for p in mnist_tree.glob("*/*") if p.is_dir()):
        dest = root / folder.relative_to(mnist_tree)
        dest.mkdir(parents=True)
        for image in sorted(folder.glob("*.png"))[:PER_CLASS]:
            (dest / image.name).symlink_to(image)
    return root


def _run(*args) -> str:
    out = CliRunner().invoke(cli, [str(a) for a in args])
    assert out.exit_code == 0, out.output
    return out.output


def _top1(output: str) -> float:
    return float(re.search(r"top1 ([\d.]+) %", output).group(1))


def _batch(cfg, paths) -> torch.Tensor:
    """The evaluation's test view of ``paths`` (the loader every protocol uses)."""
    records = [ImageRecord(str(p), ()) for p in paths]
    return next(iter(build_eval_loader(records, cfg.data, batch_size=len(records),
                                       probe=cfg.probe)))[0]


def _features(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


def _read(path):
    """``(state, meta)`` of an export file through the libraries' own readers."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
        assert metadata["format"] == "pt"
        return safetensors.torch.load_file(str(path)), meta_from_strings(metadata)
    obj = torch.load(path, weights_only=True)
    if "meta" in obj:  # moco
        state = {k.removeprefix("module.encoder_q."): v for k, v in obj["state_dict"].items()}
        return {k: v for k, v in state.items() if not k.startswith("fc.")}, obj["meta"]
    return obj, obj._metadata["hpt_hpc"]


@pytest.fixture(scope="module", params=["resnet50", "vit-s16"])
def trained(request, tmp_path_factory, digits):
    """A 3-step stage of the family through `hpt-hpc train`."""
    family = request.param
    folder = tmp_path_factory.mktemp(family)
    config = write_tiny_config(folder, {"mnist": digits},
                               {"target": {"dataset": "mnist", "iterations": 3}},
                               **TIMM_FAMILIES[family], **ONE_SAVE)
    _run("train", "--config", config)
    return family, folder, config, StageLayout(folder / "out", "target").final


def test_stage_probe_export_embed(trained, digits):
    family, folder, config, final = trained
    cfg, saved = load_config(config), load_checkpoint(str(final))
    name, kwargs = TIMM_ARGS[family]
    fresh = timm.create_model(name, pretrained=False, **kwargs)
    assert saved["feature_dim"] == fresh.num_features  # the width read from the model
    probe = _run("probe", "--config", config, "--dataset", "mnist",
                 "--checkpoint", "stage:target")
    assert CHANCE < _top1(probe) <= 100, probe

    images = _batch(cfg, sorted((digits / "test").rglob("*.png"))[:16])
    reference = _features(backbone_from_checkpoint(cfg, str(final)), images)
    layouts = ["timm", "torchvision", "moco"] if family == "resnet50" else ["timm", "moco"]
    metas = []
    for fmt in layouts:
        for suffix in [".pt"] if fmt == "moco" else [".pt", ".safetensors"]:
            path = folder / f"{fmt}{suffix}"
            out = _run("export", final, "--format", fmt, "--out", path)
            state, meta = _read(path)
            metas.append(meta)
            assert meta["layout"] == fmt
            if fmt == "torchvision":  # timm's ResNet-50 keys are torchvision's
                model = torchvision.models.resnet50()
                model.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
                model.fc = torch.nn.Identity()
                assert "not a stock torchvision ResNet" in out
            else:
                model = timm.create_model(name, pretrained=False, **kwargs)
            model.load_state_dict(state, strict=True)
            assert torch.allclose(_features(model, images), reference, atol=1e-5)
            loaded = hpt_hpc.load_backbone(path)
            assert loaded.meta == meta
            assert torch.allclose(_features(loaded.model, images), reference, atol=1e-5)
            if fmt == "timm":
                assert f"load: timm.create_model('{name}', pretrained=False" in out
    assert all(m == {**metas[0], "layout": m["layout"]} for m in metas)
    meta = metas[0]
    size = cfg.data.image_size
    assert meta["model"]["timm"] == {"name": name, "kwargs": kwargs}
    assert {k: meta["model"][k] for k in ("arch", "in_channels", "image_size",
                                          "feature_dim", "torchvision")} == {
        "arch": f"timm:{name}", "in_channels": 1, "image_size": size,
        "feature_dim": reference.shape[1], "torchvision": None}
    assert meta["preprocessing"] == {
        "input_size": size, "resize": round(size / 0.875), "center_crop_ratio": 0.875,
        "channels": 1, "mean": [0.5], "std": [0.5], "interpolation": "bilinear"}
    assert {k: meta["provenance"][k] for k in ("stage", "variant", "method", "ssl", "steps",
                                              "dataset", "config_digest")} == {
        "stage": "target", "variant": "full", "method": "Target", "ssl": "moco-v2",
        "steps": 3, "dataset": "mnist", "config_digest": config_digest(saved["config"])}

    # A classifier on top (docs/backbones.md): reset_classifier after the strict load, or
    # a model with num_classes loaded non-strictly misses exactly the classifier's keys.
    state, _ = _read(folder / "timm.safetensors")
    classifier = timm.create_model(name, pretrained=False, **kwargs)
    classifier.load_state_dict(state, strict=True)
    classifier.reset_classifier(10)
    assert _features(classifier, images).shape == (16, 10)
    headed = timm.create_model(name, pretrained=False, **{**kwargs, "num_classes": 10})
    missing, unexpected = headed.load_state_dict(state, strict=False)
    head = headed.pretrained_cfg["classifier"]
    assert not unexpected and missing and all(k.startswith(f"{head}.") for k in missing)

    # embed: the features of the timm model loaded from the timm export
    prefix = folder / "emb" / "val"
    _run("embed", "--config", config, "--dataset", "mnist", "--split", "val",
         "--checkpoint", "stage:target", "--out", prefix)
    with open(f"{prefix}.index.csv", encoding="utf-8") as handle:
        root = handle.readline().removeprefix("# root: ").rstrip("\n")
        rows = [(int(r["row"]), f"{root}/{r['path']}") for r in csv.DictReader(handle)][:16]
    embedded = np.load(f"{prefix}.npy")
    assert embedded.shape == (10 * PER_CLASS, fresh.num_features)
    timm_model = timm.create_model(name, pretrained=False, **kwargs)
    timm_model.load_state_dict(_read(folder / "timm.pt")[0], strict=True)
    expected = _features(timm_model, _batch(cfg, [p for _, p in rows])).numpy()
    assert np.allclose(embedded[[r for r, _ in rows]], expected, atol=1e-5)


def test_layouts_a_model_cannot_take_are_refused(trained):
    family, folder, _, final = trained
    cases = [("moco", "m.safetensors", "--format moco is a torch file")]
    if family != "resnet50":
        cases.append(("torchvision", "tv.pt", "torchvision has no model with the keys"))
    for fmt, name, message in cases:
        out = CliRunner().invoke(cli, ["export", str(final), "--format", fmt,
                                       "--out", str(folder / name)])
        assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
        assert out.output.startswith("error: ") and message in out.output
        assert not (folder / name).exists()


@pytest.mark.parametrize("family", ["resnet50", "vit-s16"])
def test_sweep_base_and_hpt(family, tmp_path, digits, caplog):
    """Base of a backbone without BatchNorm is the base model as is (one log line says
    so); with BatchNorm only the running statistics change. HPT trains."""
    experiment = write_tiny_experiment(
        tmp_path, {"mnist": digits},
        {"s": {"method": ["Base", "HPT"], "dataset": ["mnist"], "steps": [2]}},
        config_sections={**TIMM_FAMILIES[family], **ONE_SAVE}, methods={"Base": {"bn_batches": 2}},
        references=[])
    with caplog.at_level(logging.INFO):
        _run("sweep", experiment, "--executor", "debug")
    rows = {row["method"]: row for row in hpt_hpc.results(experiment, as_frame=False)}
    assert {"Base", "HPT"} <= set(rows)
    assert all(CHANCE < rows[m]["score_pct"] <= 100 for m in ("Base", "HPT")), rows
    layout = OutputLayout(tmp_path / "out")
    base = load_checkpoint(str(layout.upstream("base").final))["model"]
    ckpt = {m: load_checkpoint(str(layout.root / rows[m]["checkpoint"]))["model"]
            for m in ("Base", "HPT")}
    online = [k for k in base if k.startswith("encoder_q.")]
    stats = {k for k in online if k.endswith(("running_mean", "running_var"))}
    changed = {m: {k for k in online if not torch.equal(base[k], ckpt[m][k])
                   and not k.endswith("num_batches_tracked")} for m in ckpt}
    said = "has no BatchNorm layers, so there are no statistics to re-estimate"
    if family == "vit-s16":
        assert not stats and changed["Base"] == set() and said in caplog.text
    else:
        assert stats and changed["Base"] == stats and said not in caplog.text
    assert changed["HPT"] - stats  # weights trained


def test_convnext_on_five_band_images(tmp_path, digits):
    """in_channels 5 through timm's in_chans: a stage, a probe, a timm export."""
    bands = _band_tree(digits, tmp_path / "bands")
    config = write_tiny_config(
        tmp_path, {"bands": bands}, {"target": {"dataset": "bands", "iterations": 3}},
        model={"arch": "timm:convnext_atto", "in_channels": 5},
        data={"image_size": 32, "channels": 5, "mean": MEAN, "std": STD, "workers": 0},
        augment={"color_jitter": {"enabled": False}, "grayscale": {"enabled": False}},
        **ONE_SAVE)
    _run("train", "--config", config)
    probe = _run("probe", "--config", config, "--dataset", "bands",
                 "--checkpoint", "stage:target")
    assert CHANCE < _top1(probe) <= 100, probe
    final, cfg = StageLayout(tmp_path / "out", "target").final, load_config(config)
    _run("export", final, "--out", tmp_path / "convnext.safetensors")  # default: timm
    state, meta = _read(tmp_path / "convnext.safetensors")
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=0, in_chans=5)
    model.load_state_dict(state, strict=True)
    assert model.stem[0].weight.shape[1] == 5 and meta["model"]["feature_dim"] == model.num_features
    images = _batch(cfg, sorted((bands / "test").rglob("*.tif"))[:8])
    reference = _features(backbone_from_checkpoint(cfg, str(final)), images)
    assert torch.allclose(_features(model, images), reference, atol=1e-5)
