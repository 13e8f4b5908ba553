"""What a stage says it is, through the CLI: its method follows from its variant and where
it starts."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.config import config_to_dict
from hpt_hpc.models import MoCo, save_checkpoint_atomic, stage_checkpoint
from tiny import tiny_config, write_tiny_config

REPO = Path(__file__).resolve().parents[1]


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _files(tmp_path):
    """A base and a source checkpoint of this toolkit, and a torchvision state dict."""
    cfg = tiny_config(tmp_path / "ck", {}, {})
    model = MoCo.from_config(cfg.model, cfg.moco, queue_size=8)
    files = {}
    for stage in ("base", "source"):
        files[stage] = tmp_path / f"{stage}.pt"
        save_checkpoint_atomic(stage_checkpoint(model, None, 1, 1, stage, "full", None,
                                                config_to_dict(cfg), {}, None), files[stage])
    files["foreign"] = tmp_path / "resnet.pt"
    torch.save(model.encoder_q.state_dict(), files["foreign"])
    return files


def test_a_stage_method_follows_from_variant_and_start(tmp_path, mnist_tree, monkeypatch):
    # The tutorial config as shipped: variant full from a random init trains from scratch.
    shutil.copytree(mnist_tree / "train", tmp_path / "my-images")
    (tmp_path / "configs" / "tutorial").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "tutorial" / "my-images.yaml",
                tmp_path / "configs" / "tutorial")
    monkeypatch.chdir(tmp_path)
    tutorial = ["config", "show", "--config", "configs/tutorial/my-images.yaml", "--plan"]
    assert "  target: Target (full) on mine [my-images], init random," in invoke(*tutorial)
    files = _files(tmp_path)
    for start, method in (("base", "HPT"), ("source", "B+S+T"), ("foreign", "HPT")):
        out = invoke(*tutorial, "--set", f"stages.target.init={files[start]}")
        assert f"  target: {method} (full) on mine" in out, (start, out)

    config = write_tiny_config(tmp_path, {"m": mnist_tree}, {
        "base": {"dataset": "m"}, "source": {"dataset": "m", "init": "stage:base"},
        "target": {"dataset": "m", "init": "stage:source"}})

    def methods(*sets, chain=False):
        args = ["config", "show", "--config", config, "--plan"] + (["--chain"] if chain else [])
        out = invoke(*args, *[x for s in sets for x in ("--set", s)])
        return re.findall(r"^  (\w+): (.+?) \((\S+)\) on m ", out, re.M)

    upstream = [("base", "MoCo-v2 base", "full"), ("source", "MoCo-v2 source", "full")]
    assert methods() == upstream + [("target", "B+S+T", "full")]
    assert methods(chain=True) == upstream + [("target", "B+S+T", "full")]
    assert methods("stages.target.variant=scratch", "stages.target.init=null")[2] == \
        ("target", "Target", "scratch")
    assert methods("stages.target.variant=bn-stats")[2] == ("target", "B+S", "bn-stats")
    from_base = "stages.target.init=stage:base"
    assert methods(from_base)[2] == ("target", "HPT", "full")
    assert methods(from_base, "stages.target.variant=bn-stats")[2] == \
        ("target", "Base", "bn-stats")
    assert methods(from_base, "stages.target.variant=bn")[2] == ("target", "HPT-BN", "bn")
    assert methods(from_base, "stages.target.variant=bn", "stages.target.train_head=false"
                   )[2] == ("target", "HPT-BN-frozen-head", "bn")
