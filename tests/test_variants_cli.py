"""Variants last-blocks and lora as real stages through ``hpt-hpc train`` on a timm ViT:
what moves, that every reader of a lora checkpoint (the next stage's init, export,
load_backbone) gets plain merged weights, that a resumed lora stage continues
bit-identically, and that settings the backbone cannot take are one clear line."""
import pytest
import timm
import torch
from click.testing import CliRunner

import hpt_hpc
from hpt_hpc.cli.main import cli
from hpt_hpc.config import StageLayout
from hpt_hpc.models import load_checkpoint
from hpt_hpc.models.loading import read_weights
from hpt_hpc.plan.experiment import load_experiment
from hpt_hpc.plan.unit_plans import unit_config
from hpt_hpc.plan.units import expand
from hpt_hpc.config import config_from_dict
from tiny import run_stage_of, tiny_config, write_tiny_config, write_tiny_experiment

VIT_KWARGS = {"patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2}
VIT = {"arch": "timm:vit_small_patch16_224", "in_channels": 1, "timm_kwargs": VIT_KWARGS}


def _final(folder, stage):
    return StageLayout(folder / "out", stage).final


def _changed(after: dict, before: dict) -> set:
    assert set(after) == set(before)
    return {k for k, v in after.items() if not torch.equal(v, before[k])}


def test_lora_then_last_blocks_stages_through_the_cli(tmp_path, mnist_tree, fashion_tree):
    stages = {"base": {"dataset": "fashion", "iterations": 2},
              "source": {"dataset": "mnist", "init": "stage:base", "iterations": 3},
              "target": {"dataset": "mnist", "init": "stage:source", "iterations": 2}}
    config = write_tiny_config(tmp_path, {"fashion": fashion_tree, "mnist": mnist_tree},
                               stages, model=VIT)
    out = CliRunner().invoke(cli, ["train", "--config", str(config),
                                   "--set", "stages.source.variant=lora",
                                   "--set", "stages.source.lora.rank=2",
                                   "--set", "stages.target.variant=last-blocks",
                                   "--set", "stages.target.blocks=2"])
    assert out.exit_code == 0, out.output
    source = load_checkpoint(_final(tmp_path, "source"))
    assert source["variant"] == "lora"
    adapted = sorted(k for k in source["model"] if ".lora_B." in k)
    assert adapted == [f"encoder_{e}.backbone.blocks.{b}.attn.qkv.lora_B.default.weight"
                       for e in "kq" for b in (0, 1)]
    assert all(source["model"][k].abs().sum() > 0 for k in adapted)  # the adapters trained

    base = read_weights(_final(tmp_path, "base")).backbone
    merged = read_weights(_final(tmp_path, "source")).backbone  # what every reader gets
    norms = {k for k in base if "norm" in k}
    assert _changed(merged, base) == norms | {k for k in base if k.startswith("blocks.2.")} | \
        {"blocks.0.attn.qkv.weight", "blocks.1.attn.qkv.weight"}

    target = load_checkpoint(_final(tmp_path, "target"))
    assert target["method"] == "HPT-LB" and not any("lora" in k for k in target["model"])
    after = read_weights(_final(tmp_path, "target")).backbone  # started from the merge:
    assert _changed(after, merged) == norms | {k for k in base if k.startswith(
        ("blocks.1.", "blocks.2."))}  # the frozen rest equals the merged source exactly

    exported = tmp_path / "source.pt"
    out = CliRunner().invoke(cli, ["export", str(_final(tmp_path, "source")),
                                   "--out", str(exported)])
    assert out.exit_code == 0, out.output
    vit = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0,
                            in_chans=1, img_size=16, **VIT_KWARGS).eval()
    vit.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(
            hpt_hpc.load_backbone(str(_final(tmp_path, "source"))).model(x), vit(x))


def test_a_resumed_lora_stage_ends_bit_identical(tmp_path, mnist_tree, fashion_tree):
    data = {"fashion": fashion_tree, "mnist": mnist_tree}
    base_cfg = tiny_config(tmp_path / "base", data, {"base": {"dataset": "fashion",
                                                              "iterations": 2}}, model=VIT)
    base = run_stage_of(base_cfg, "base").checkpoint
    stages = {"target": {"dataset": "mnist", "variant": "lora", "init": str(base),
                         "iterations": 4, "lora": {"rank": 2, "alpha": 4.0}}}
    whole = run_stage_of(tiny_config(tmp_path / "whole", data, stages, model=VIT), "target")
    cut_cfg = tiny_config(tmp_path / "cut", data, stages, model=VIT)
    assert not run_stage_of(cut_cfg, "target", stop_after=2).completed
    rest = run_stage_of(cut_cfg, "target")
    assert rest.resumed_from == 2 and rest.completed
    assert load_checkpoint(whole.checkpoint)["method"] == "HPT-LoRA"
    a, b = load_checkpoint(whole.checkpoint)["model"], load_checkpoint(rest.checkpoint)["model"]
    assert any(".lora_A." in k for k in a) and set(a) == set(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


@pytest.mark.parametrize("setting,message", [
    ("stages.target.blocks=4", "error: stages.target: blocks: 4, but "
                               "timm:vit_small_patch16_224 has 3 blocks"),
    ("stages.target.lora.targets=[qkv_nope]", "error: stages.target: lora.targets: qkv_nope "
                                              "matches no layer of the frozen blocks"),
])
def test_settings_the_backbone_cannot_take_are_one_line(tmp_path, mnist_tree, setting,
                                                         message):
    config = write_tiny_config(tmp_path, {"mnist": mnist_tree},
                               {"base": {"dataset": "mnist", "iterations": 1},
                                "target": {"dataset": "mnist", "init": "stage:base",
                                           "iterations": 1}}, model=VIT)
    variant = "last-blocks" if "blocks" in setting else "lora"
    out = CliRunner().invoke(cli, ["train", "--config", str(config), "--set", setting,
                                   "--set", f"stages.target.variant={variant}"])
    assert out.exit_code == 2, out.output
    assert message in out.output and "Traceback" not in out.output
    assert not (tmp_path / "out" / "base").exists()  # caught before any work
    fresh = CliRunner().invoke(cli, ["train", "--config", str(config), "--set",
                                     "stages.base.variant=lora"])
    assert fresh.exit_code == 2 and "error: stages.base: variant 'lora' needs an init " \
                                    "checkpoint" in fresh.output


def test_experiment_files_run_hpt_lb_and_hpt_lora_with_their_settings(tmp_path, mnist_tree):
    studies = {"partial": {"method": ["HPT-LB", "HPT-LoRA"], "dataset": ["mnist"],
                           "steps": [3]}}
    methods = {"HPT-LB": {"blocks": 2}, "HPT-LoRA": {"lora": {"rank": 4}}}
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, studies, methods=methods)
    out = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run", "--set",
                                   "model.arch=timm:vit_small_patch16_224", "--set",
                                   f"model.timm_kwargs={VIT_KWARGS}"])
    assert out.exit_code == 0, out.output
    assert "HPT-LB-mnist-3st-seed0" in out.output and "HPT-LoRA-mnist-3st-seed0" in out.output
    spec = load_experiment(str(path))
    stages = {u.method: config_from_dict(unit_config(spec, u)).stages["target"]
              for u in expand(spec).pretrain}
    assert (stages["HPT-LB"].variant, stages["HPT-LB"].blocks) == ("last-blocks", 2)
    assert (stages["HPT-LoRA"].variant, stages["HPT-LoRA"].lora.rank) == ("lora", 4)
    methods["HPT-LB"]["blocks"] = 4  # more than the ViT's 3: refused before any work
    path = write_tiny_experiment(tmp_path, {"mnist": mnist_tree}, studies, methods=methods)
    out = CliRunner().invoke(cli, ["sweep", str(path), "--dry-run", "--set",
                                   "model.arch=timm:vit_small_patch16_224", "--set",
                                   f"model.timm_kwargs={VIT_KWARGS}"])
    assert out.exit_code == 2 and "error: stages.target: blocks: 4, but " in out.output
