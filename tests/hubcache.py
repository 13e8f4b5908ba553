"""Tiny public-model weights written in each library's cache layout, and a tiny stage
that starts from them (shared by the hub tests)."""
import hashlib
import io
import json
import os
from pathlib import Path

import safetensors.torch
import timm
import torch
from click.testing import CliRunner

from hpt_hpc.cli.main import cli
from hpt_hpc.models.loading import read_weights
from hpt_hpc.models.resnet import build_resnet
from tiny import write_tiny_config

VIT = {"arch": "timm:vit_tiny_patch16_224", "in_channels": 1,
       "timm_kwargs": {"patch_size": 4, "depth": 2}}
TIMM_REPO = "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k"  # timm's default tag's repo
RESNET18_FILE = "resnet18-f37072fd.pth"  # the file name of ResNet18_Weights.IMAGENET1K_V1
REVISION = "3" * 40


def vit_weights(depth: int = 2, classes: int = 5, seed: int = 7) -> dict:
    """A tiny timm ViT as timm saves it (classifier ``head`` included)."""
    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=classes,
                              in_chans=1, img_size=16, patch_size=4, depth=depth)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


def resnet_weights(arch: str = "resnet18") -> dict:
    """torchvision-keyed weights of the tiny config's ResNet, with a classifier ``fc``."""
    torch.manual_seed(11)
    state = build_resnet(arch, width=0.125, small_stem=True, in_channels=1,
                         stem_stride=2).state_dict()
    width = state["layer4.1.bn2.weight" if arch == "resnet18" else "layer4.2.bn3.weight"]
    return {**state, "fc.weight": torch.randn(10, len(width)), "fc.bias": torch.randn(10)}


def as_bytes(tensors: dict, fmt: str) -> bytes:
    if fmt == "safetensors":
        return safetensors.torch.save(tensors)
    buffer = io.BytesIO()
    torch.save(tensors, buffer)
    return buffer.getvalue()


def hf_entry(hub: Path, repo: str, files: dict) -> None:
    """A Hugging Face cache entry: blobs by content hash, a snapshot of symlinks, refs/main."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / REVISION
    for sub in ("blobs", "refs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(REVISION)
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))


def stage_config(tmp_path, mnist_tree, init, model=None, **stage) -> Path:
    sections = {"model": model} if model else {}
    return write_tiny_config(tmp_path, {"m": mnist_tree},
                             {"target": {"dataset": "m", "variant": "bn-stats", "init": init,
                                         **stage}},
                             optim={"lr": 0.05, "batch_size": 8, "iterations": 2}, **sections)


def train(cfg: Path, *overrides):
    args = ["train", "--config", str(cfg)] + [a for o in overrides for a in ("--set", o)]
    return CliRunner().invoke(cli, args)


def result_of(tmp_path) -> dict:
    return json.loads((tmp_path / "out/target/result.json").read_text())


def weights_kept(tmp_path, saved: dict, classifier: str) -> None:
    """Every saved backbone weight is in the finished stage exactly (bn-stats trains
    nothing; only BatchNorm statistics are re-estimated)."""
    backbone = read_weights(str(tmp_path / "out/target/checkpoints/final.pt")).backbone
    compared = [k for k in saved if not k.startswith(classifier)
                and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert compared and all(torch.equal(backbone[k], saved[k]) for k in compared)
