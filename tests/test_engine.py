"""Stage engine on real images: resume equivalence, checkpoints, variants, chaining."""
import os

import torch
import pytest

from hpt_hpc.errors import HptError
from hpt_hpc.models import load_checkpoint
from hpt_hpc.train import learning_rate
from tiny import run_all_stages, run_stage_of, tiny_config


def _params(state, prefix="encoder_q."):
    return {k: v for k, v in state["model"].items() if k.startswith(prefix)}


def _conv_and_bn_keys(model_state):
    conv = [k for k in model_state if k.startswith("encoder_q.") and k.endswith("conv1.weight")]
    bn_affine = [k for k in model_state if k.startswith("encoder_q.") and "bn" in k
                 and k.endswith(("weight", "bias"))]
    bn_stats = [k for k in model_state if k.startswith("encoder_q.") and
                k.endswith(("running_mean", "running_var"))]
    return conv, bn_affine, bn_stats


def test_learning_rate_schedule():
    assert learning_rate(0, 100, 1.0, 0, "cosine") == pytest.approx(1.0)
    assert learning_rate(50, 100, 1.0, 0, "cosine") == pytest.approx(0.5)
    assert learning_rate(100, 100, 1.0, 0, "cosine") == pytest.approx(0.0)
    assert learning_rate(4, 100, 1.0, 10, "cosine") == pytest.approx(0.5)
    assert learning_rate(70, 100, 0.3, 0, "constant") == pytest.approx(0.3)


def test_resume_matches_uninterrupted_run(tmp_path, mnist_tree):
    """Stop after 3 of 6 steps, resume, and end bit-identical to an uninterrupted run.

    Exact equality holds on CPU: the data stream is positioned by (epoch, step), the model's
    RNG state (shuffle-BN permutations) is restored from the checkpoint, and the optimiser's
    momentum buffers come back with it. A resume that restarted the data stream, dropped the
    optimiser state or re-drew the queue would differ.
    """
    stages = {"target": {"dataset": "mnist", "variant": "scratch"}}
    full_cfg = tiny_config(tmp_path / "full", {"mnist": mnist_tree}, stages)
    full = run_stage_of(full_cfg, "target")
    assert full.completed and full.steps == 6

    cut_cfg = tiny_config(tmp_path / "cut", {"mnist": mnist_tree}, stages)
    part = run_stage_of(cut_cfg, "target", stop_after=3)
    assert not part.completed and part.steps == 3
    assert load_checkpoint(part.checkpoint)["step"] == 3
    rest = run_stage_of(cut_cfg, "target")
    assert rest.resumed_from == 3 and rest.steps == 6

    a, b = load_checkpoint(full.checkpoint), load_checkpoint(rest.checkpoint)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["step"] == b["step"] == 6


def test_checkpoint_contents_round_trip(tmp_path, mnist_tree):
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree},
                      {"target": {"dataset": "mnist", "variant": "scratch"}})
    res = run_stage_of(cfg, "target")
    state = load_checkpoint(res.checkpoint)  # weights_only=True inside
    assert state["format"] == "hpt-hpc/1" and state["stage"] == "target"
    assert state["config"]["optim"]["iterations"] == 6
    assert {"torch", "numpy", "python"} <= set(state["rng"])
    assert state["optimizer"]["state"], "optimizer momentum buffers missing"
    assert not list((tmp_path / "target" / "checkpoints").glob("*.tmp*"))


@pytest.mark.parametrize("train_head", [False, True])
def test_bn_variant_changes_only_batchnorm(tmp_path, mnist_tree, fashion_tree, train_head):
    """HPT-BN: convolutions stay; BN affine parameters train; the projection head trains
    only with ``train_head`` (the official HPT code's behaviour, the default)."""
    datasets = {"fashion": fashion_tree, "mnist": mnist_tree}
    base_cfg = tiny_config(tmp_path, datasets, {"base": {"dataset": "fashion"}})
    base = load_checkpoint(run_stage_of(base_cfg, "base").checkpoint)
    cfg = tiny_config(tmp_path, datasets, {
        "base": {"dataset": "fashion"},
        "target": {"dataset": "mnist", "variant": "bn", "init": "stage:base", "lr": 0.5,
                   "train_head": train_head}})
    after = load_checkpoint(run_stage_of(cfg, "target").checkpoint)
    conv, bn_affine, bn_stats = _conv_and_bn_keys(after["model"])
    assert conv and bn_affine
    for key in conv:
        assert torch.equal(after["model"][key], base["model"][key]), f"{key} changed"
    head = "encoder_q.fc.0.weight"
    assert torch.equal(after["model"][head], base["model"][head]) != train_head
    assert any(not torch.equal(after["model"][k], base["model"][k]) for k in bn_affine)
    assert any(not torch.equal(after["model"][k], base["model"][k]) for k in bn_stats)


def test_bn_stats_variant_changes_only_running_statistics(tmp_path, mnist_tree, fashion_tree):
    datasets = {"fashion": fashion_tree, "mnist": mnist_tree}
    cfg = tiny_config(tmp_path, datasets, {
        "base": {"dataset": "fashion"},
        "target": {"dataset": "mnist", "variant": "bn-stats", "init": "stage:base",
                   "iterations": 4}})
    results = run_all_stages(cfg)
    base = load_checkpoint(results["base"].checkpoint)
    after = load_checkpoint(results["target"].checkpoint)
    conv, bn_affine, bn_stats = _conv_and_bn_keys(after["model"])
    for key in conv + bn_affine:
        assert torch.equal(after["model"][key], base["model"][key]), f"{key} changed"
    changed = [k for k in bn_stats if not torch.equal(after["model"][k], base["model"][k])]
    assert len(changed) == len(bn_stats), "every BN layer's statistics should be re-estimated"
    assert after["optimizer"] is None


def test_chain_target_starts_from_base(tmp_path, mnist_tree, fashion_tree):
    """base -> target on real data: the target run provably loads the base checkpoint."""
    datasets = {"fashion": fashion_tree, "mnist": mnist_tree}
    cfg = tiny_config(tmp_path, datasets, {
        "base": {"dataset": "fashion"},
        "target": {"dataset": "mnist", "variant": "full", "init": "stage:base",
                   "iterations": 1}}, optim={"lr": 0.0, "batch_size": 8, "iterations": 6,
                                             "weight_decay": 0.0})
    results = run_all_stages(cfg)
    assert results["target"].init_layout == "hpt-hpc"
    base = load_checkpoint(results["base"].checkpoint)
    target = load_checkpoint(results["target"].checkpoint)
    # lr 0 and wd 0: conv weights after one target step equal the base's exactly.
    assert torch.equal(target["model"]["encoder_q.layer1.0.conv1.weight"],
                       base["model"]["encoder_q.layer1.0.conv1.weight"])
    assert target["init"] == str(results["base"].checkpoint)


def test_missing_upstream_stage_is_a_clear_error(tmp_path, mnist_tree):
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree}, {
        "base": {"dataset": "mnist"},
        "target": {"dataset": "mnist", "init": "stage:base"}})
    with pytest.raises(HptError, match="run stage 'base' first"):
        run_stage_of(cfg, "target")
    cfg2 = tiny_config(tmp_path, {"mnist": mnist_tree}, {
        "target": {"dataset": "mnist", "init": str(tmp_path / "nope.pt")}})
    with pytest.raises(HptError, match="does not exist"):
        run_stage_of(cfg2, "target")


def test_batch_larger_than_dataset_fails_before_work(tmp_path, mnist_tree):
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree},
                      {"target": {"dataset": "mnist", "batch_size": 100000}})
    with pytest.raises(HptError, match="fewer than one global batch"):
        run_stage_of(cfg, "target")
    assert not (tmp_path / "target").exists()


def test_checkpoint_storage_one_copy_when_finished_and_kept_steps(tmp_path, mnist_tree):
    """A finished stage holds one copy of its weights (last.pt is a hard link to final.pt,
    no previous.pt); checkpoint.keep keeps the last N periodic saves as links."""
    from hpt_hpc.config import StageLayout
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree},
                      {"target": {"dataset": "mnist", "iterations": 7}},
                      checkpoint={"every": 2, "keep": 2})
    run_stage_of(cfg, "target")
    layout = StageLayout(tmp_path, "target")
    assert os.path.samefile(layout.final, layout.last) and not layout.previous.exists()
    assert [p.name for p in layout.kept_checkpoints()] == ["step-000000004.pt",
                                                           "step-000000006.pt"]
    assert torch.load(layout.kept(4), weights_only=True)["step"] == 4
    files = [p for p in layout.checkpoints.iterdir() if p.is_file()]
    inodes = {p.stat().st_ino for p in files}
    assert len(files) == 4 and len(inodes) == 3  # final = last, two kept steps
