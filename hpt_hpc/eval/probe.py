"""Minimal linear probe: frozen backbone, linear classifier trained with SGD on its features.

This is the fast *cached-features* mode: features are extracted once (eval mode, no
augmentation), then a linear layer is trained for ``iterations`` SGD steps with step
decays at ``milestones``; val and test accuracy are measured every ``eval_every`` steps and
the reported score is the test accuracy at the best val accuracy (the paper's protocol).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..config import ProbeConfig


@dataclass
class Features:
    """Features ``x`` (N, D) with integer labels ``y`` (N,)."""

    x: torch.Tensor
    y: torch.Tensor


@dataclass
class ProbeResult:
    """Outcome of one probe; ``curve`` holds ``(step, val_acc, test_acc)`` rows."""

    test_at_best_val: float
    best_val: float
    best_step: int
    curve: List[Tuple[int, float, float]] = field(default_factory=list)
    mode: str = "cached-features"


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, batches: Iterable, device: torch.device,
                     ) -> Features:
    """Run a frozen backbone (eval mode) over ``(images, labels)`` batches."""
    was_training = backbone.training
    backbone.eval()
    xs, ys = [], []
    for images, labels in batches:
        xs.append(backbone(images.to(device)).flatten(1).float().cpu())
        ys.append(torch.as_tensor(labels).long())
    backbone.train(was_training)
    if not xs:
        raise ValueError("no images to extract features from")
    return Features(torch.cat(xs), torch.cat(ys))


def pixel_features(batches: Iterable) -> Features:
    """Raw pixels as features: the reference row every results table carries."""
    xs, ys = [], []
    for images, labels in batches:
        xs.append(images.flatten(1).float())
        ys.append(torch.as_tensor(labels).long())
    return Features(torch.cat(xs), torch.cat(ys))


def _accuracy(weight: torch.nn.Linear, feats: Features) -> float:
    with torch.no_grad():
        return float((weight(feats.x).argmax(1) == feats.y).float().mean())


def standardize(train: Features, *others: Features) -> Tuple[Features, ...]:
    """Scale features by the training split's mean and std (applied to every split)."""
    mean = train.x.mean(0, keepdim=True)
    std = train.x.std(0, keepdim=True).clamp_min(1e-6)
    return tuple(Features((f.x - mean) / std, f.y) for f in (train,) + others)


def linear_probe(train: Features, val: Features, test: Features, cfg: ProbeConfig,
                 seed: int = 0, num_classes: Optional[int] = None,
                 normalize: bool = True) -> ProbeResult:
    """Train a linear classifier with SGD; return test accuracy at the best val accuracy."""
    if normalize:
        train, val, test = standardize(train, val, test)
    classes = num_classes or int(max(train.y.max(), val.y.max(), test.y.max())) + 1
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(train.x.shape[1], classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, cfg.milestones, gamma=0.1)
    n = train.x.shape[0]
    batch = min(cfg.batch_size, n)
    result = ProbeResult(test_at_best_val=0.0, best_val=-1.0, best_step=0)
    perm, cursor = torch.randperm(n, generator=gen), 0
    for step in range(1, cfg.iterations + 1):
        if cursor + batch > n:
            perm, cursor = torch.randperm(n, generator=gen), 0
        idx = perm[cursor:cursor + batch]
        cursor += batch
        loss = F.cross_entropy(head(train.x[idx]), train.y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % cfg.eval_every == 0 or step == cfg.iterations:
            val_acc, test_acc = _accuracy(head, val), _accuracy(head, test)
            result.curve.append((step, val_acc, test_acc))
            if val_acc > result.best_val:
                result.best_val, result.test_at_best_val, result.best_step = \
                    val_acc, test_acc, step
    return result
