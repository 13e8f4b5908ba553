"""Linear probe on a frozen backbone: a linear head trained with SGD on its features.

This module holds the *cached* mode (features extracted once, eval mode, no augmentation,
standardised by the training split's statistics) and the pieces every protocol shares:
the step-decay schedule with val/test scoring every ``eval_every`` steps, and the paper's
report, the test score at the best val score. Multi-hot targets (multi-label data) train a
BCE-with-logits head scored by mean per-class AUROC; integer labels train a softmax head
scored by top-1 accuracy (see :mod:`hpt_hpc.eval.metrics`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..config import ProbeConfig
from ..progress import Progress
from ..config.protocols import AUGMENTED, CACHED, KNN  # noqa: F401 - the modes' names
from .metrics import compact_predictions, metric_for, score


@dataclass
class Features:
    """Features ``x`` (N, D) with labels ``y``: integers (N,) or multi-hot (N, classes)."""

    x: torch.Tensor
    y: torch.Tensor
    paths: Optional[List[str]] = None  # the images, in order (unreadable ones dropped)

    @property
    def multi_label(self) -> bool:
        return self.y.dim() == 2


@dataclass
class Trial:
    """One trained head (a probe, a fine-tune) or one vote, with the record's field names:
    ``score`` the test score at the best val score ``val_score`` (reached at
    ``best_step``), ``curve`` its ``(step, val, test)`` rows, ``predictions`` the compact
    test predictions at the best val step; ``labels``: the labelled training images of a
    fine-tune's budget (0: not a budget)."""

    score: float
    val_score: float
    best_step: int
    curve: List[Tuple[int, float, float]] = field(default_factory=list)
    mode: str = CACHED
    metric: str = "top1"
    seed: int = 0
    predictions: Optional[np.ndarray] = None
    labels: int = 0


def label_targets(labels) -> torch.Tensor:
    """Integer class labels, or float multi-hot rows for multi-label data."""
    labels = torch.as_tensor(labels)
    return labels.float() if labels.dim() == 2 else labels.long()


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, batches: Iterable, device: torch.device,
                     progress: Optional[Progress] = None) -> Features:
    """Run a frozen backbone (eval mode) over ``(images, labels)`` batches."""
    was_training = backbone.training
    backbone.eval()
    xs, ys = [], []
    for images, labels in (progress.timed(batches) if progress else batches):
        xs.append(backbone(images.to(device)).flatten(1).float().cpu())
        ys.append(label_targets(labels))
        if progress:
            progress.update(len(xs))
    backbone.train(was_training)
    if not xs:
        raise ValueError("no images to extract features from")
    return Features(torch.cat(xs), torch.cat(ys))


def pixel_features(batches: Iterable) -> Features:
    """Raw pixels as features: the reference row every results table carries."""
    xs, ys = [], []
    for images, labels in batches:
        xs.append(images.flatten(1).float())
        ys.append(label_targets(labels))
    return Features(torch.cat(xs), torch.cat(ys))


def standardize(train: Features, *others: Features) -> Tuple[Features, ...]:
    """Scale features by the training split's mean and std (applied to every split)."""
    mean = train.x.mean(0, keepdim=True)
    std = train.x.std(0, keepdim=True).clamp_min(1e-6)
    return tuple(Features((f.x - mean) / std, f.y) for f in (train,) + others)


def new_head(in_dim: int, classes: int, seed: int) -> torch.nn.Linear:
    """A linear head with N(0, 0.01) weights (seeded) and zero bias, as in MoCo's probe."""
    head = torch.nn.Linear(in_dim, classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed))
        head.bias.zero_()
    return head


def head_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for integer labels, BCE-with-logits for multi-hot targets."""
    if targets.dim() == 2:
        return F.binary_cross_entropy_with_logits(logits, targets.float())
    return F.cross_entropy(logits, targets)


def step_decay(optimizer: torch.optim.Optimizer, milestones: Sequence[int]):
    """x0.1 learning-rate decay at each of ``milestones`` (in optimiser steps)."""
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(milestones), gamma=0.1)


def sgd_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler) -> None:
    """One optimiser step on ``loss`` and one scheduler step."""
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()


class Resume(NamedTuple):
    """How :func:`run_schedule` resumes and saves: ``saved`` (a state loaded before the
    training batches were built, or None), where to save (:class:`~.resume.EvalState`),
    and the modules' ``snapshot() -> dict`` / ``restore(dict)``."""

    saved: Optional[Dict[str, Any]]
    state: Any
    snapshot: Callable[[], Dict[str, Any]]
    restore: Callable[[Dict[str, Any]], None]


def run_schedule(train_step: Callable[[int], None],
                 evaluate: Callable[[], Tuple[float, float, Any]], iterations: int,
                 eval_every: int, progress: Optional[Progress] = None,
                 resume: Optional[Resume] = None,
                 ) -> Tuple[float, float, int, List[Tuple[int, float, float]], Any]:
    """Call ``train_step(step)`` for steps 1..iterations and ``evaluate() -> (val, test,
    test_predictions)`` every ``eval_every`` steps and at the end; return
    ``(test_at_best_val, best_val, best_step, curve, test_predictions_at_best_val)`` (the
    first step wins a tie of val scores). ``progress`` is told every step; with ``resume``
    the schedule continues after the saved step and saves at every validation point."""
    if iterations < 1 or eval_every < 1:
        raise ValueError(f"iterations ({iterations}) and eval_every ({eval_every}) must be "
                         "positive")
    best = (0.0, float("-inf"), 0, None)
    curve: List[Tuple[int, float, float]] = []
    first = 1
    if resume is not None and resume.saved is not None:
        saved = resume.saved
        resume.restore(saved["modules"])
        curve = [tuple(point) for point in saved["curve"]]
        kept = saved["predictions"]
        best = (saved["best"][0], saved["best"][1], int(saved["best"][2]),
                kept.numpy() if isinstance(kept, torch.Tensor) else kept)
        first = int(saved["step"]) + 1
        torch.set_rng_state(saved["rng"])
    for step in range(first, iterations + 1):
        train_step(step)
        if step % eval_every == 0 or step == iterations:
            val, test, predictions = evaluate()
            curve.append((step, val, test))
            if val > best[1]:
                best = (test, val, step, predictions)
            if resume is not None and step < iterations:
                kept = best[3]
                resume.state.save({
                    "step": step, "curve": curve, "best": best[:3],
                    "predictions": torch.from_numpy(kept) if isinstance(kept, np.ndarray)
                    else kept, "modules": resume.snapshot(), "rng": torch.get_rng_state()})
        if progress:
            progress.update(step, note=f"best val {best[1]:.4f}" if curve else "")
    return best[0], best[1], best[2], curve, best[3]


def num_classes_of(*splits: Features) -> int:
    """Width of the head: multi-hot width, or the largest integer label + 1."""
    if splits[0].multi_label:
        return int(splits[0].y.shape[1])
    return int(max(int(f.y.max()) for f in splits)) + 1


def linear_probe(train: Features, val: Features, test: Features, cfg: ProbeConfig,
                 seed: int = 0, num_classes: Optional[int] = None,
                 normalize: bool = True, mode: str = CACHED,
                 progress: Optional[Progress] = None) -> Trial:
    """Cached mode: train a linear head with SGD on fixed features; return the test score
    at the best val score."""
    if normalize:
        train, val, test = standardize(train, val, test)
    classes = num_classes or num_classes_of(train, val, test)
    head = new_head(train.x.shape[1], classes, seed)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = step_decay(optimizer, cfg.milestones)
    gen = torch.Generator().manual_seed(seed)
    n = train.x.shape[0]
    batch = min(cfg.batch_size, n)
    order = {"perm": torch.randperm(n, generator=gen), "cursor": 0}

    def train_step(_step: int) -> None:
        if order["cursor"] + batch > n:
            order["perm"], order["cursor"] = torch.randperm(n, generator=gen), 0
        idx = order["perm"][order["cursor"]:order["cursor"] + batch]
        order["cursor"] += batch
        sgd_step(head_loss(head(train.x[idx]), train.y[idx]), optimizer, scheduler)

    @torch.no_grad()
    def evaluate() -> Tuple[float, float, np.ndarray]:
        logits = head(test.x)
        return (score(head(val.x), val.y), score(logits, test.y),
                compact_predictions(logits, test.y))

    test_score, best_val, best_step, curve, predictions = run_schedule(
        train_step, evaluate, cfg.iterations, cfg.eval_every, progress)
    return Trial(test_score, best_val, best_step, curve, mode, metric_for(train.multi_label),
                 seed, predictions)
