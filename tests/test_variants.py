"""HPT's variants on every backbone family (built-in ResNet, timm ResNet, ViT, ConvNeXt):
exactly which parameters train and move, LoRA adapters (peft) merged into plain weights
that give the adapted model's features, and DDP over peft-wrapped layers."""
import gc
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hpt_hpc.config.schema import LoraConfig
from hpt_hpc.models import build_encoder, configure_variant, load_backbone_into, reestimate_bn_stats
from hpt_hpc.models.loading import classify
from hpt_hpc.models.weights import CHECKPOINT_FORMAT
from hpt_hpc.ssl import MoCo

VIT = {"patch_size": 4, "depth": 3, "embed_dim": 32, "num_heads": 2}
FAMILIES = {  # tiny members of each family: (model settings, image size)
    "resnet": (dict(arch="resnet18", width=0.125, small_stem=True, stem_stride=2), 16),
    "timm-resnet": (dict(arch="timm:resnet18", timm_kwargs={
        "channels": [8, 16, 32, 64], "stem_width": 8, "layers": [1, 1, 1, 2]}), 32),
    "vit": (dict(arch="timm:vit_small_patch16_224", timm_kwargs=VIT), 16),
    # a layer scale of 0.5 (timm's 1e-6 makes a step on the block's norm invisible in fp32)
    "convnext": (dict(arch="timm:convnext_atto", timm_kwargs={
        "depths": [1, 1, 1, 2], "dims": [8, 16, 32, 64], "ls_init_value": 0.5}), 32),
}
# The spec, written out per family: the blocks in forward order and the layers LoRA adapts
# by default inside a block.
BLOCKS = {
    "resnet": [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)],
    "timm-resnet": ["backbone.layer1.0", "backbone.layer2.0", "backbone.layer3.0",
                    "backbone.layer4.0", "backbone.layer4.1"],
    "vit": [f"backbone.blocks.{j}" for j in range(3)],
    "convnext": ["backbone.stages.0.blocks.0", "backbone.stages.1.blocks.0",
                 "backbone.stages.2.blocks.0", "backbone.stages.3.blocks.0",
                 "backbone.stages.3.blocks.1"],
}
LORA_LAYERS = {"resnet": ("conv1", "conv2"), "timm-resnet": ("conv1", "conv2"),
               "vit": ("attn.qkv",), "convnext": ("mlp.fc1", "mlp.fc2")}
NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
LORA = LoraConfig(rank=2, alpha=6.0)


def moco(family: str, seed: int = 0) -> MoCo:
    torch.manual_seed(seed)
    model, _ = FAMILIES[family]
    return MoCo(**model, in_channels=1, image_size=FAMILIES[family][1], dim=16,
                queue_size=32, momentum=0.9)


def images(family: str, n: int = 8, seed: int = 1) -> torch.Tensor:
    size = FAMILIES[family][1]
    return torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


def expected_trainable(encoder: nn.Module, family: str, variant: str, blocks: int = 1) -> set:
    """The names a variant trains, computed from the spec above (not from the variants
    code): norms by module type, the last blocks by name, adapters by name, the head."""
    names = [n for n, _ in encoder.named_parameters()]
    if variant in ("full", "scratch"):
        return set(names)
    if variant == "bn-stats":
        return set()
    modules = dict(encoder.named_modules())
    chosen = {n for n in names if not n.startswith("fc.")
              and isinstance(modules[n.rsplit(".", 1)[0]], NORMS)}
    chosen |= {n for n in names if n.startswith("fc.")}
    if variant in ("last-blocks", "lora"):
        last = BLOCKS[family][len(BLOCKS[family]) - blocks:]
        chosen |= {n for n in names if n.startswith(tuple(f"{b}." for b in last))}
    if variant == "lora":
        chosen |= {n for n in names if ".lora_A." in n or ".lora_B." in n}
    return chosen


def adapted(encoder: nn.Module) -> set:
    return {n.split(".lora_A.")[0] for n, _ in encoder.named_parameters() if ".lora_A." in n}


def sgd_steps(model: MoCo, params, family: str, steps: int = 3) -> None:
    opt = torch.optim.SGD(params, lr=0.5)
    model.train()
    for step in range(steps):
        x = images(family, seed=step)
        loss, _, _ = model(x, x.flip(3))
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("variant", ["full", "bn", "last-blocks", "lora", "bn-stats"])
def test_variant_trains_and_moves_exactly_its_parameters(family, variant):
    m = moco(family)
    params = m.trainable_parameters(variant, blocks=1, lora=LORA)
    online = m.encoder_q
    want = expected_trainable(online, family, variant)
    assert want or variant == "bn-stats"
    assert {n for n, p in online.named_parameters() if p.requires_grad} == want
    assert [id(p) for p in params] == [id(p) for n, p in online.named_parameters() if n in want]
    assert not any(p.requires_grad for p in m.encoder_k.parameters())  # targets follow by EMA
    if variant == "lora":
        frozen_blocks = BLOCKS[family][:-1]
        assert adapted(online) == {f"{b}.{layer}" for b in frozen_blocks
                                   for layer in LORA_LAYERS[family]}
        assert adapted(m.encoder_k) == adapted(online)  # targets carry the same adapters,
        theirs = dict(m.encoder_k.named_parameters())  # started as copies of the online's
        assert all(torch.equal(p, theirs[n]) for n, p in online.named_parameters()
                   if ".lora_" in n)
    before = {n: p.detach().clone() for n, p in online.named_parameters()}
    if variant == "bn-stats":
        state = {k: v.clone() for k, v in online.state_dict().items()}
        batches = [images(family, seed=s) for s in range(3)]
        used = reestimate_bn_stats(online, batches, 3)
        has_bn = family in ("resnet", "timm-resnet")
        assert used == (3 if has_bn else 0)
        moved = {k for k, v in online.state_dict().items() if not torch.equal(v, state[k])}
        assert bool(moved) == has_bn and all(k.endswith(("running_mean", "running_var",
                                                         "num_batches_tracked")) for k in moved)
    else:
        sgd_steps(m, params, family)
    changed = {n for n, p in online.named_parameters() if not torch.equal(p, before[n])}
    assert changed == want, (sorted(want - changed)[:5], sorted(changed - want)[:5])


def test_bn_on_the_builtin_resnet_selects_the_parameters_it_always_did():
    """The MoCo quickstart's HPT-BN: BatchNorm weight/bias in module order, then the head
    (the selection before normalisation layers of every kind counted), same objects."""
    m = moco("resnet")
    params = m.trainable_parameters("bn")
    enc = m.encoder_q
    legacy = [p for name, mod in enc.named_modules() if not name.startswith("fc")
              and isinstance(mod, nn.modules.batchnorm._BatchNorm)
              for p in (mod.weight, mod.bias)] + list(enc.fc.parameters())
    assert [id(p) for p in params] == [id(p) for p in legacy]
    zero = configure_variant(enc, "last-blocks", blocks=0)  # no block: HPT-BN
    assert [id(p) for p in zero] == [id(p) for p in legacy]


@pytest.mark.parametrize("family", ["vit", "timm-resnet"])
def test_last_blocks_counts_blocks_from_the_end(family):
    m = moco(family)
    m.trainable_parameters("last-blocks", blocks=2)
    assert {n for n, p in m.encoder_q.named_parameters() if p.requires_grad} == \
        expected_trainable(m.encoder_q, family, "last-blocks", blocks=2)
    with pytest.raises(ValueError, match="blocks: 6, but .* has 5 blocks" if family ==
                       "timm-resnet" else "blocks: 6, but .* has 3 blocks"):
        m.trainable_parameters("last-blocks", blocks=6)


def _toolkit_checkpoint(m: MoCo, family: str, lora: LoraConfig) -> dict:
    model, size = FAMILIES[family]
    return {"format": CHECKPOINT_FORMAT, "model": m.state_dict(), "stage": "target",
            "config": {"model": dict(model, in_channels=1),
                       "stages": {"target": {"variant": "lora", "lora": vars(lora)}}},
            "ssl": "moco-v2", "backbone_key": "encoder_q.", "target_key": "encoder_k."}


@pytest.mark.parametrize("family", ["resnet", "vit", "convnext"])
def test_merged_adapters_give_the_features_of_the_adapted_model(family):
    """A checkpoint read as a backbone (classify: evaluation, export, the next stage's
    init, load_backbone) holds plain weights W + alpha/r B A: loaded strictly into a
    plain encoder they give the peft-wrapped encoder's features, and so does the target."""
    m = moco(family)
    m.trainable_parameters("lora", blocks=1, lora=LORA)
    with torch.no_grad():  # B starts at 0: give every adapter a visible delta
        for name, p in m.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    weights = classify(_toolkit_checkpoint(m, family, LORA), "ckpt")
    assert not any("lora_" in k or "base_layer" in k for k in
                   list(weights.backbone) + list(weights.target))
    model, size = FAMILIES[family]
    x = images(family, n=4)
    for peft_encoder, state in ((m.encoder_q, weights.backbone), (m.encoder_k, None)):
        plain = build_encoder(**model, in_channels=1, image_size=size)
        plain.fc = nn.Identity()
        if state is None:  # the target: encoder keys, head included
            state = {k: v for k, v in weights.target.items() if not k.startswith("fc.")}
            plain.load_state_dict(state, strict=True)
        else:
            report = load_backbone_into(plain, state, "merged")
            assert not (report["missing_keys"] or report["unexpected_keys"])
        peft_encoder.eval(), plain.eval()
        with torch.no_grad():
            want = peft_encoder.forward_features(x)
            got = plain.forward_features(x)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    unmerged = build_encoder(**model, in_channels=1, image_size=size).eval()
    base = {k.replace(".base_layer.", "."): v for k, v in m.encoder_q.state_dict().items()
            if ".lora_" not in k and not k.startswith("fc.")}
    unmerged.fc = nn.Identity()
    unmerged.load_state_dict(base, strict=True)
    with torch.no_grad():  # the adapters matter: without them the features differ
        assert not torch.allclose(unmerged.forward_features(x), m.encoder_q.forward_features(x),
                                  atol=1e-3)


def test_adapters_refuse_what_they_cannot_adapt():
    from hpt_hpc.errors import ConfigError
    m = moco("vit")
    with pytest.raises(ConfigError, match="lora.targets: attn.nope matches no layer .* attn.qkv, attn.proj"):
        m.trainable_parameters("lora", lora=LoraConfig(targets=["attn.nope"]))
    with pytest.raises(ConfigError, match="norm1 is a LayerNorm; LoRA adapts Linear"):
        moco("vit").trainable_parameters("lora", lora=LoraConfig(targets=["norm1"]))
    with pytest.raises(ConfigError, match="blocks 3 leaves no frozen block"):
        moco("vit").trainable_parameters("lora", blocks=3)
    with pytest.raises(ConfigError, match="conv_dw is a Conv2d"):  # depthwise: groups > 1
        moco("convnext").trainable_parameters("lora", lora=LoraConfig(targets=["conv_dw"]))


# --------------------------------------------------------------------------- DDP
def _ddp_worker(rank, init_file):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        m = moco("vit", seed=rank)  # different weights and adapters per rank until DDP
        params = m.trainable_parameters("lora", blocks=1, lora=LORA)
        net = nn.parallel.DistributedDataParallel(m)  # broadcasts rank 0's state
        frozen = {n: p.detach().clone() for n, p in m.encoder_q.named_parameters()
                  if not p.requires_grad}
        opt = torch.optim.SGD(params, lr=0.5)
        for step in range(2):
            x = images("vit", n=4, seed=10 * rank + step)  # different data per rank
            loss, _, _ = net(x, x.flip(3))
            opt.zero_grad()
            loss.backward()
            opt.step()
        for name, p in m.encoder_q.named_parameters():
            if name in frozen:
                assert torch.equal(p, frozen[name]), name
        flat = torch.cat([p.detach().flatten() for p in m.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(2)]
        dist.all_gather(gathered, flat)
        assert torch.equal(gathered[0], gathered[1])  # gradients were averaged
        adapters = torch.cat([p.detach().flatten() for n, p in m.encoder_q.named_parameters()
                              if ".lora_B." in n])
        assert adapters.abs().sum() > 0  # the adapters trained
        del net  # DDP's reducer holds the group: free it before the group goes
        dist.barrier()
    finally:
        gc.collect()  # nothing holding the group left for shutdown (gloo would abort)
        dist.destroy_process_group()


def test_lora_under_ddp_keeps_ranks_identical(tmp_path):
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"),), nprocs=2, join=True)
