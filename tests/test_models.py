"""ResNet builder, MoCo-v2, queue sizing and training variants (tiny CPU models)."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from hpt_hpc.config.schema import ModelConfig, MocoConfig
from hpt_hpc.models import (build_backbone_from_config, build_resnet,
                            feature_dim_for, is_bn, reestimate_bn_stats)
from hpt_hpc.ssl import MoCo, cap_queue_size

TINY = dict(arch="resnet18", width=0.25, small_stem=True, in_channels=3)


def tiny_moco(**kw):
    torch.manual_seed(0)
    args = dict(TINY, dim=16, queue_size=32, temperature=0.2)
    args.update(kw)
    return MoCo(**args)


def images(n=8, seed=1):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- ResNet
@pytest.mark.parametrize("arch,tv_builder", [("resnet18", torchvision.models.resnet18),
                                             ("resnet50", torchvision.models.resnet50)])
def test_full_width_state_dict_loads_strictly_into_torchvision(arch, tv_builder):
    ours = build_resnet(arch)
    tv = tv_builder()
    tv_keys = set(tv.state_dict())
    assert set(ours.state_dict()) == tv_keys - {"fc.weight", "fc.bias"}
    state = dict(ours.state_dict())
    state.update({k: v for k, v in tv.state_dict().items() if k.startswith("fc.")})
    tv.load_state_dict(state, strict=True)
    ours.eval(), tv.eval()
    tv.fc = nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x))
    assert ours.feature_dim == {"resnet18": 512, "resnet50": 2048}[arch]


def test_width_small_stem_and_channels():
    net = build_resnet("resnet18", width=0.25, small_stem=True, in_channels=1)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert net.conv1.in_channels == 1 and isinstance(net.maxpool, nn.Identity)
    assert net.stage_widths == [16, 32, 64, 128] and net.feature_dim == 128
    assert isinstance(net.fc, nn.Identity)
    assert "layer1.0.conv1.weight" in net.state_dict()
    out = net.eval()(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 128)
    # the small stem keeps resolution: layer4 sees 4x4 maps at 32x32 input
    feats = net.layer4(net.layer3(net.layer2(net.layer1(net.bn1(net.conv1(torch.randn(1, 1, 32, 32)))))))
    assert feats.shape[-2:] == (4, 4)


def test_resnet50_width_and_classifier_and_min_width():
    net = build_resnet("resnet50", width=0.125, num_classes=10)
    assert net.stage_widths == [8, 16, 32, 64] and net.feature_dim == 256 == feature_dim_for("resnet50", 0.125)
    assert net.fc.out_features == 10 and net.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert build_resnet("resnet18", width=0.01).stage_widths == [8, 8, 8, 8]
    with pytest.raises(ValueError, match="unknown arch"):
        build_resnet("vgg16")


def test_build_backbone_from_config():
    net = build_backbone_from_config(ModelConfig(arch="resnet18", width=0.5, small_stem=True, in_channels=2))
    assert net.conv1.in_channels == 2 and net.feature_dim == 256 and net.small_stem


# --------------------------------------------------------------------------- MoCo
def test_moco_keys_match_official_layout_and_key_encoder_is_a_frozen_copy():
    m = tiny_moco()
    keys = set(m.state_dict())
    assert {"encoder_q.conv1.weight", "encoder_q.fc.0.weight", "encoder_q.fc.2.weight",
            "encoder_k.fc.2.bias", "queue", "queue_ptr"} <= keys
    assert m.encoder_q.fc[0].in_features == m.feature_dim == 128 and m.encoder_q.fc[2].out_features == 16
    for (nq, pq), (nk, pk) in zip(m.encoder_q.named_parameters(), m.encoder_k.named_parameters()):
        assert nq == nk and torch.equal(pq, pk) and pq.requires_grad and not pk.requires_grad
    assert m.queue.shape == (16, 32)
    torch.testing.assert_close(m.queue.norm(dim=0), torch.ones(32))
    single = tiny_moco(mlp=False)
    assert isinstance(single.encoder_q.fc, nn.Linear) and single.encoder_q.fc.out_features == 16
    hidden = tiny_moco(mlp_hidden=64)
    assert hidden.encoder_q.fc[0].out_features == 64


def test_backbone_state_dict_has_no_head_and_loads_into_plain_resnet():
    m = tiny_moco()
    bb = m.backbone_state_dict()
    assert bb and not any(k.startswith("fc.") for k in bb)
    plain = build_resnet(**TINY)
    plain.load_state_dict(bb, strict=True)


def test_from_config_and_queue_override():
    m = MoCo.from_config(ModelConfig(**TINY), MocoConfig(queue_size=4096, dim=8, momentum=0.9,
                                                         mlp=False, bn_splits=4), queue_size=24)
    assert m.queue.shape == (8, 24) and m.momentum == 0.9 and m.bn_splits == 4 and not m.mlp


def test_forward_logits_labels_and_loss_are_infonce():
    m = tiny_moco(shuffle_bn=False, momentum=1.0).train()
    x, xk = images(), images(seed=2)
    queue_before = m.queue.clone()
    loss, logits, labels = m(x, xk)
    assert logits.shape == (8, 33) and labels.shape == (8,) and not labels.any()
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    with torch.no_grad():
        q = F.normalize(m.encoder_q(x), dim=1)
        k = F.normalize(m.encoder_k(xk), dim=1)
    torch.testing.assert_close(logits[:, 1:] * 0.2, q @ queue_before)
    torch.testing.assert_close(logits[:, 0] * 0.2, (q * k).sum(1))
    loss.backward()
    assert all(p.grad is not None for p in m.encoder_q.parameters())
    assert all(p.grad is None for p in m.encoder_k.parameters())
    # keys were enqueued at positions 0..7
    torch.testing.assert_close(m.queue[:, :8].T, k)
    assert int(m.queue_ptr) == 8


def test_training_steps_reduce_loss_on_fixed_batch():
    m = tiny_moco(shuffle_bn=False, momentum=1.0, queue_size=64).train()
    x = images()
    xk = x.flip(3) + 0.5 * images(seed=3)
    queue0 = m.queue.clone()
    opt = torch.optim.SGD(m.encoder_q.parameters(), lr=0.02)
    losses = []
    for _ in range(5):
        loss, _, _ = m(x, xk)
        m.queue.copy_(queue0)  # keep the same negatives: the loss is then a function of theta_q
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_momentum_update_math_params_only():
    m = tiny_moco(momentum=0.5)
    torch.manual_seed(5)
    with torch.no_grad():
        for p in m.encoder_k.parameters():
            p.normal_()
        for p in m.encoder_q.parameters():
            p.normal_()
        m.encoder_q.bn1.running_mean.fill_(3.0)
    expected = [0.5 * pk.clone() + 0.5 * pq.clone()
                for pq, pk in zip(m.encoder_q.parameters(), m.encoder_k.parameters())]
    m.momentum_update()
    for e, pk in zip(expected, m.encoder_k.parameters()):
        torch.testing.assert_close(pk, e)
    assert torch.equal(m.encoder_k.bn1.running_mean, torch.zeros_like(m.encoder_k.bn1.running_mean))


def test_forward_applies_momentum_update_before_keys():
    m = tiny_moco(momentum=0.0, shuffle_bn=False).train()
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(0.1)
    _, logits, _ = m(images(), images(seed=2))
    for pq, pk in zip(m.encoder_q.parameters(), m.encoder_k.parameters()):
        assert torch.equal(pq, pk)
    # keys came from the *updated* encoder_k (== encoder_q here)
    with torch.no_grad():
        k = F.normalize(m.encoder_q(images(seed=2)), dim=1)
    torch.testing.assert_close(m.queue[:, :8].T, k)


def test_enqueue_wraps_around_and_keeps_last_keys_when_batch_exceeds_queue():
    m = tiny_moco(queue_size=10, dim=3)
    batches = [torch.full((4, 3), float(i + 1)) for i in range(3)]
    for b in batches:
        m._enqueue(b)
    assert int(m.queue_ptr) == 2
    assert m.queue[0].tolist() == [3, 3, 1, 1, 2, 2, 2, 2, 3, 3]
    m._enqueue(torch.arange(12.0).unsqueeze(1).repeat(1, 3))
    assert int(m.queue_ptr) == 2  # (2 + 10) % 10
    assert sorted(m.queue[0].tolist()) == list(range(2, 12))


def test_single_process_split_bn_is_unshuffled_correctly():
    m = tiny_moco(shuffle_bn=True, bn_splits=2)
    x = images(8)
    m.encoder_k.eval()  # per-sample keys are then independent of the batch composition
    torch.testing.assert_close(m.compute_keys(x), F.normalize(m.encoder_k(x), dim=1))
    m.encoder_k.train()  # train-mode BN: sub-batch statistics change the keys
    with torch.no_grad():
        whole = F.normalize(m.encoder_k(x), dim=1)
    assert not torch.allclose(m.compute_keys(x), whole, atol=1e-4)
    # splits never go below two samples: a batch of 2 runs as one batch
    torch.testing.assert_close(m.compute_keys(x[:2]), F.normalize(m.encoder_k(x[:2]), dim=1))


def test_cap_queue_size_says_so_in_one_log_line_and_caps(caplog):
    with caplog.at_level("INFO", logger="hpt_hpc.ssl.moco"):
        assert cap_queue_size(65536, 2100, 256) == 2048
        assert cap_queue_size(65536, 100, 256) == 256
        assert cap_queue_size(1000, 2100, 256) == 1000
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "MoCo queue size K=65536 exceeds the 2100 images listed; using K=2048",
        "MoCo queue size K=65536 exceeds the 100 images listed; using K=256"]


# --------------------------------------------------------------------------- variants
def _sgd_step(model, params, x):
    opt = torch.optim.SGD(params, lr=0.5)
    loss, _, _ = model(x, x.flip(3))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_variant_full_trains_all_of_encoder_q():
    m = tiny_moco()
    params = m.trainable_parameters("full")
    assert {id(p) for p in params} == {id(p) for p in m.encoder_q.parameters()}
    assert not any(p.requires_grad for p in m.encoder_k.parameters())
    assert len(m.trainable_parameters("scratch")) == len(params)
    with pytest.raises(ValueError, match="unknown variant"):
        m.trainable_parameters("linear")


def test_variant_bn_trains_only_batchnorm_affine():
    m = tiny_moco(shuffle_bn=False).train()
    with_head = {id(p) for p in m.trainable_parameters("bn")}  # the default: head trains too
    assert {id(p) for p in m.encoder_q.fc.parameters()} < with_head
    params = m.trainable_parameters("bn", train_head=False)
    bn_params = {id(p) for mod in m.encoder_q.modules() if isinstance(mod, nn.BatchNorm2d)
                 for p in (mod.weight, mod.bias)}
    assert params and {id(p) for p in params} == bn_params
    assert {id(p) for p in m.parameters() if p.requires_grad} == bn_params
    convs_before = {n: p.clone() for n, p in m.encoder_q.named_parameters() if not p.requires_grad}
    bn_before = m.encoder_q.bn1.weight.clone()
    rm_before = m.encoder_q.bn1.running_mean.clone()
    _sgd_step(m, params, images())
    assert any("fc." in n for n in convs_before)  # the head is frozen too
    for n, p in m.encoder_q.named_parameters():
        if n in convs_before:
            assert torch.equal(p, convs_before[n]), n
    assert not torch.allclose(m.encoder_q.bn1.weight, bn_before)
    assert not torch.equal(m.encoder_q.bn1.running_mean, rm_before)


def test_variant_bn_stats_changes_only_running_stats():
    m = tiny_moco()
    assert m.trainable_parameters("bn-stats") == []
    assert not any(p.requires_grad for p in m.parameters())
    params_before = {n: p.clone() for n, p in m.named_parameters()}
    mean_before = m.encoder_q.layer1[0].bn1.running_mean.clone()
    m.eval()
    batches = [(images(4, seed=s) * 2 + 1, torch.zeros(4)) for s in range(5)]
    assert reestimate_bn_stats(m.encoder_q, batches, num_batches=3) == 3
    assert not m.encoder_q.training and not m.encoder_q.bn1.training  # modes restored
    assert all(bn.momentum == 0.1 for bn in m.encoder_q.modules() if is_bn(bn))
    assert not torch.equal(m.encoder_q.layer1[0].bn1.running_mean, mean_before)
    assert int(m.encoder_q.bn1.num_batches_tracked) == 3
    for n, p in m.named_parameters():
        assert torch.equal(p, params_before[n]), n


def test_reestimate_bn_stats_is_a_cumulative_average():
    net = nn.Sequential(nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2)).train()
    net[1].running_mean.fill_(7.0)
    batches = [torch.randn(4, 2, 3, 3) + i for i in range(4)]
    assert reestimate_bn_stats(net, iter(batches), num_batches=10) == 4
    with torch.no_grad():
        outs = [net[0](b) for b in batches]
    expected_mean = torch.stack([o.mean(dim=(0, 2, 3)) for o in outs]).mean(0)
    expected_var = torch.stack([o.transpose(0, 1).reshape(2, -1).var(1) for o in outs]).mean(0)
    torch.testing.assert_close(net[1].running_mean, expected_mean)
    torch.testing.assert_close(net[1].running_var, expected_var)
    assert net.training and net[1].momentum == 0.1
