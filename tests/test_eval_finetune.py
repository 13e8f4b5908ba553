"""Semi-supervised transfer on real images, and the Base method (``variant: bn-stats``)
whose checkpoint the protocols evaluate: label budgets, the fine-tune's optimiser and
weights, and a Base stage that changes BatchNorm statistics only."""
import dataclasses

import pytest
import torch

from hpt_hpc.data import list_split
from hpt_hpc.errors import HptError
from hpt_hpc.eval.finetune import finetune_optimizer, select_label_budget
from hpt_hpc.eval.probe import new_head
from hpt_hpc.eval.runner import backbone_from_checkpoint, evaluate_finetune
from hpt_hpc.models import is_bn, load_checkpoint
from tiny import run_all_stages, tiny_config

FINETUNE = {"labels": 20, "label_seed": 0, "lr": 0.05, "head_lr_mult": 10.0,
            "iterations": 8, "milestones": [4], "batch_size": 10, "eval_every": 4}


@pytest.fixture(scope="module")
def base_chain(tmp_path_factory, mnist_tree, fashion_tree):
    """A MoCo base stage on Fashion-MNIST, then the Base method (bn-stats) on MNIST."""
    out = tmp_path_factory.mktemp("base-chain")
    cfg = tiny_config(out, {"fashion": fashion_tree, "mnist": mnist_tree}, {
        "base": {"dataset": "fashion"},
        "target": {"dataset": "mnist", "variant": "bn-stats", "init": "stage:base",
                   "iterations": 4}}, finetune=FINETUNE)
    results = run_all_stages(cfg)
    return cfg, results["base"].checkpoint, results["target"].checkpoint


def test_label_budget_covers_every_class_and_follows_the_seed(mnist_tree):
    from hpt_hpc.config import DatasetConfig
    records, classes = list_split(DatasetConfig(path=str(mnist_tree)), "train")
    budget = select_label_budget(records, 13, seed=0)
    assert len(budget) == 13 and len(set(budget)) == 13
    assert {r.labels[0] for r in budget} == set(range(len(classes)))
    assert budget == select_label_budget(records, 13, seed=0)
    assert budget != select_label_budget(records, 13, seed=1)
    assert [records.index(r) for r in budget] == sorted(records.index(r) for r in budget)
    exact = select_label_budget(records, len(classes), seed=3)
    assert sorted(r.labels[0] for r in exact) == list(range(len(classes)))
    with pytest.raises(HptError, match="below the 10 classes"):
        select_label_budget(records, 9, seed=0)
    with pytest.raises(HptError, match="exceeds"):
        select_label_budget(records, len(records) + 1, seed=0)


def test_head_learns_head_lr_mult_times_faster(tmp_path, mnist_tree):
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree}, {}, finetune=FINETUNE)
    backbone = backbone_from_checkpoint(cfg, None)
    head = new_head(16, 10, seed=0)
    optimizer = finetune_optimizer(backbone, head, cfg.finetune)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.05)
    assert groups["head"]["lr"] == pytest.approx(0.5)
    assert len(groups["head"]["params"]) == 2
    assert len(groups["backbone"]["params"]) == len(list(backbone.parameters()))


def test_base_method_changes_only_batchnorm_statistics(base_chain):
    """Every parameter and non-BN buffer of the query encoder is bit-identical to the base
    checkpoint; every BN running statistic is re-estimated; the key encoder is a copy."""
    _, base_ckpt, target_ckpt = base_chain
    before, after = load_checkpoint(base_ckpt)["model"], load_checkpoint(target_ckpt)["model"]
    assert load_checkpoint(target_ckpt)["optimizer"] is None
    backbone = backbone_from_checkpoint(base_chain[0], None)
    bn_buffers = {f"encoder_q.{m}.{b}" for m, mod in backbone.named_modules() if is_bn(mod)
                  for b, _ in mod.named_buffers(recurse=False)}
    query = [k for k in after if k.startswith("encoder_q.")]
    assert bn_buffers and bn_buffers < set(query)
    for key in query:
        if key in bn_buffers:
            assert not torch.equal(after[key], before[key]), f"{key} was not re-estimated"
        else:
            assert torch.equal(after[key], before[key]), f"{key} changed"
    for key in query:
        assert torch.equal(after["encoder_k." + key[len("encoder_q."):]], after[key])


def test_finetune_from_checkpoint_trains_the_backbone(base_chain):
    cfg, _, target_ckpt = base_chain
    record, (result,) = evaluate_finetune(cfg, "mnist", str(target_ckpt), "cpu")
    assert result.mode == "finetune" and result.metric == "top1" and result.labels == 20
    assert record.mode == "finetune (20 labels)" and record.protocol == "finetune"
    assert [step for step, _, _ in result.curve] == [4, 8] and record.curve == result.curve
    best = dict((step, (val, test)) for step, val, test in result.curve)[result.best_step]
    assert (result.val_score, result.score) == best == (record.val_score, record.score)
    assert result.val_score == max(val for _, val, _ in result.curve)


def test_finetune_updates_backbone_weights_only_with_a_backbone_rate(base_chain):
    """lr > 0 moves convolution weights; lr = 0 keeps them (BN statistics still move,
    the backbone being in train mode)."""
    from hpt_hpc.eval.finetune import finetune
    from hpt_hpc.models.resnet import feature_dim_for
    from hpt_hpc.data.transforms import build_eval_transform
    from hpt_hpc.eval.splits import image_batches, load_splits
    cfg, _, target_ckpt = base_chain
    space = load_splits(cfg, "mnist")
    budget = select_label_budget(space.records["train"], 20, 0)
    changed = {}
    for lr in (0.05, 0.0):
        ft = dataclasses.replace(cfg.finetune, lr=lr, iterations=3, eval_every=3)
        backbone = backbone_from_checkpoint(cfg, str(target_ckpt))
        start = {k: v.clone() for k, v in backbone.state_dict().items()}
        train = image_batches(cfg, budget, space, build_eval_transform(cfg.data, cfg.probe),
                              10, steps=3)
        held = image_batches(cfg, space.records["val"][:20], space,
                             build_eval_transform(cfg.data, cfg.probe), 20)
        width = feature_dim_for(cfg.model.arch, cfg.model.width)
        finetune(backbone, width, train, held, held, ft, torch.device("cpu"),
                 space.num_classes, space.multi_label)
        changed[lr] = {k for k, v in backbone.state_dict().items()
                       if not torch.equal(v, start[k])}
    assert "conv1.weight" in changed[0.05] and "layer4.1.conv2.weight" in changed[0.05]
    assert not any(k.endswith(("conv1.weight", "conv2.weight")) for k in changed[0.0])
    assert "bn1.running_mean" in changed[0.0]


def test_finetune_rejects_a_budget_below_the_classes(tmp_path, mnist_tree):
    cfg = tiny_config(tmp_path, {"mnist": mnist_tree}, {},
                      finetune={**FINETUNE, "labels": 3})
    with pytest.raises(HptError, match="at least one image per class"):
        evaluate_finetune(cfg, "mnist", None, "cpu")


def test_per_class_probe_budget_covers_every_class(mnist_tree):
    from hpt_hpc.config import DatasetConfig
    from hpt_hpc.eval.finetune import per_class_budget
    records, _ = list_split(DatasetConfig(path=str(mnist_tree)), "train")
    picked = per_class_budget(records, 3, seed=0)
    counts = {c: sum(1 for r in picked if r.labels == (c,)) for c in range(10)}
    assert set(counts.values()) == {3} and len(picked) == 30
    assert per_class_budget(records, 3, seed=0) == picked  # seeded
    assert per_class_budget(records, 3, seed=1) != picked
    assert picked == [r for r in records if r in picked]  # listing order
    with pytest.raises(HptError, match="at least 1"):
        per_class_budget(records, 0, seed=0)
