"""Speed switches of the training step (``compute``): each must keep the step's result."""
import copy

import pytest
import torch

from hpt_hpc.config.schema import ComputeConfig
from hpt_hpc.errors import HptError
from hpt_hpc.ssl import MoCo
from hpt_hpc.train.engine import run_stage
from hpt_hpc.train import build_stage_loader
from hpt_hpc.train.speed import (StepSpeed, make_optimizer, prepare_model, resolve_speed,
                                 set_optimizer_impl, train_step)

from tiny import run_stage_of, stage_plan_of, tiny_config

# bf16 vs fp32 over a 12-step tiny run (loss 2.2 -> 4.1 as the queue fills): each step's
# loss within 0.2 (~5%), the mean absolute gap within 0.1. Measured: max 0.14, mean 0.05.
BF16_STEP_TOLERANCE, BF16_MEAN_TOLERANCE = 0.2, 0.1


def tiny_moco(**kw):
    torch.manual_seed(0)
    args = dict(arch="resnet18", width=0.25, small_stem=True, in_channels=3, dim=16,
                queue_size=32, momentum=0.9, temperature=0.2, shuffle_bn=False)
    args.update(kw)
    return MoCo(**args)


def batch(n=8, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=gen), torch.randn(n, 3, 32, 32, generator=gen)


def run_steps(model, speed, steps=2, lr=0.1):
    optimizer = make_optimizer([p for p in model.encoder_q.parameters()], lr, 0.9, 1e-4, speed)
    losses = []
    for step in range(steps):
        view_q, view_k = batch(seed=step)
        if speed.channels_last:
            view_q, view_k = (v.contiguous(memory_format=torch.channels_last)
                              for v in (view_q, view_k))
        optimizer.zero_grad(set_to_none=True)
        loss, _ = train_step(model, model, [view_q, view_k], speed)
        optimizer.step()
        losses.append(float(loss))
    return losses, optimizer


def assert_same_state(a, b, atol):
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x.float(), y.float(), atol=atol, rtol=1e-4, msg=name)


def test_defaults_on_cpu_fp32_foreach_no_compile():
    speed = resolve_speed(ComputeConfig(), torch.device("cpu"))
    assert speed == StepSpeed("cpu", None, False, "foreach", False, 1, True)
    model = prepare_model(tiny_moco(), speed)
    assert model.encoder_q._compiled_call_impl is None  # compile is off unless asked for
    forced = resolve_speed(ComputeConfig(precision="bf16", channels_last=True,
                                         fused_optimizer="fused", accumulate=2), "cpu")
    assert forced.autocast_dtype == torch.bfloat16 and forced.channels_last
    assert forced.optimizer_impl == "fused" and forced.accumulate == 2


def test_foreach_momentum_update_equals_reference_formula():
    model = tiny_moco(momentum=0.99)
    with torch.no_grad():
        for p in model.encoder_q.parameters():
            p.add_(torch.randn_like(p))
    before_k = copy.deepcopy(model.encoder_k)
    model.momentum_update()
    pairs = zip(model.encoder_k.named_parameters(), before_k.parameters(),
                model.encoder_q.parameters())
    for (name, k), k0, q in pairs:
        torch.testing.assert_close(k, 0.99 * k0 + 0.01 * q, atol=1e-6, rtol=1e-5, msg=name)
    for (name, buf), buf0 in zip(model.encoder_k.named_buffers(), before_k.buffers()):
        assert torch.equal(buf, buf0), f"{name}: buffers are not momentum-averaged"


@pytest.mark.parametrize("channels_last,impl", [(True, "foreach"), (False, "fused"),
                                                (False, "off"), (True, "fused")])
def test_channels_last_and_sgd_kernels_match_plain_path(channels_last, impl):
    plain = tiny_moco().train()
    other = copy.deepcopy(plain)
    reference, _ = run_steps(plain, StepSpeed(optimizer_impl="off"))
    speed = StepSpeed(channels_last=channels_last, optimizer_impl=impl)
    prepare_model(other, speed)
    assert other.encoder_q.conv1.weight.is_contiguous(
        memory_format=torch.channels_last) == channels_last
    losses, optimizer = run_steps(other, speed)
    assert bool(optimizer.param_groups[0]["fused"]) == (impl == "fused")
    assert losses == pytest.approx(reference, abs=1e-4)
    assert_same_state(other, plain, atol=1e-5)


def test_optimizer_kernel_reapplied_after_loading_state():
    model = tiny_moco()
    _, saved = run_steps(model, StepSpeed(optimizer_impl="off"), steps=1)
    fused = StepSpeed(optimizer_impl="fused")
    optimizer = make_optimizer(model.encoder_q.parameters(), 0.1, 0.9, 0.0, fused)
    optimizer.load_state_dict(saved.state_dict())
    assert not optimizer.param_groups[0]["fused"]  # load_state_dict restores the saved flags
    set_optimizer_impl(optimizer, fused)
    assert optimizer.param_groups[0]["fused"] and not optimizer.param_groups[0]["foreach"]


def test_accumulation_equals_one_large_batch():
    """Two micro-batches of 4 = one batch of 8: same update, key encoder and queue.

    BN in eval mode (running statistics) makes every sample's output independent of its
    micro-batch, so the large-batch step is the exact reference. A momentum update per
    micro-batch, an enqueue between micro-batches or an unscaled loss would each differ.
    """
    whole = tiny_moco(shuffle_bn=True).eval()
    split = copy.deepcopy(whole)
    big_losses, _ = run_steps(whole, StepSpeed(), steps=3)
    micro_losses, _ = run_steps(split, StepSpeed(accumulate=2), steps=3)
    assert micro_losses == pytest.approx(big_losses, abs=1e-5)
    assert_same_state(split, whole, atol=1e-5)
    assert int(split.queue_ptr) == int(whole.queue_ptr) == 24 % 32


def test_accumulation_in_the_engine_counts_steps_and_keys(tmp_path, mnist_tree):
    stages = {"target": {"dataset": "mnist", "variant": "scratch"}}
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree}, stages, compute={"accumulate": 2})
    result = run_stage_of(cfg, "target")
    state = torch.load(result.checkpoint, weights_only=True)
    assert result.completed and result.steps == 6 and state["step"] == 6
    assert int(state["model"]["queue_ptr"]) == 6 * 8 % 64  # every micro-batch's keys
    bad = tiny_config(tmp_path / "bad", {"mnist": mnist_tree}, stages, compute={"accumulate": 3})
    with pytest.raises(HptError, match="accumulate 3"):
        run_stage_of(bad, "target")


def _loss_curve(tmp_path, mnist_tree, precision):
    stages = {"target": {"dataset": "mnist", "variant": "scratch"}}
    cfg = tiny_config(tmp_path / precision, {"mnist": mnist_tree}, stages,
                      compute={"precision": precision},
                      optim={"lr": 0.05, "batch_size": 16, "iterations": 12,
                             "weight_decay": 1e-4})
    losses = []
    plan = stage_plan_of(cfg, "target")
    loader = build_stage_loader(plan)
    try:
        run_stage(plan, loader, on_step=lambda step, loss: losses.append(loss))
    finally:
        loader.close()
    return losses


def test_bf16_autocast_loss_curve_follows_fp32(tmp_path, mnist_tree):
    fp32 = _loss_curve(tmp_path, mnist_tree, "fp32")
    bf16 = _loss_curve(tmp_path, mnist_tree, "bf16")
    assert len(fp32) == len(bf16) == 12
    gaps = [abs(a - b) for a, b in zip(fp32, bf16)]
    assert max(gaps) <= BF16_STEP_TOLERANCE, gaps
    assert sum(gaps) / len(gaps) <= BF16_MEAN_TOLERANCE, gaps
    assert max(gaps) > 0, "bf16 autocast changed nothing: was it applied?"


def test_batch_search_doubles_then_bisects():
    """The GPU batch-size search of benchmarks/train_throughput.py, on a fake memory limit."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from train_measure import largest_fitting
    tried = []

    def fits(batch):
        tried.append(batch)
        return batch <= 1000

    best = largest_fitting(fits, 256, 8192, 64)
    assert 1000 - 64 < best <= 1000
    assert tried[:3] == [256, 512, 1024] and all(b > 512 for b in tried[3:])
    assert largest_fitting(lambda b: True, 256, 2048, 64) == 2048
    assert largest_fitting(lambda b: b <= 100, 256, 8192, 64) == 64
