"""Augmented linear probe (the paper's protocol): every step draws a batch of training
images with random-resized-crop (+ flip), passes it through the frozen backbone (eval
mode, no gradients) and takes one SGD step on the linear head. Val/test images are
deterministic (resize + centre crop), so their features are extracted once."""
from __future__ import annotations

from typing import Iterable, Optional, Tuple

import numpy as np
import torch

from ..config import ProbeConfig
from ..progress import Progress
from .metrics import compact_predictions, metric_for, score
from .probe import (AUGMENTED, Features, Trial, Resume, head_loss, label_targets,
                    new_head, run_schedule, sgd_step, step_decay)


def augmented_probe(backbone: torch.nn.Module, train_batches: Iterable, val: Features,
                    test: Features, cfg: ProbeConfig, device: torch.device, seed: int,
                    num_classes: int, progress: Optional[Progress] = None,
                    state=None, saved: Optional[dict] = None) -> Trial:
    """Train a linear head on augmented training batches (at least ``cfg.iterations`` of
    them); return the test score at the best val score."""
    backbone.eval().to(device)
    head = new_head(val.x.shape[1], num_classes, seed).to(device)
    optimizer = torch.optim.SGD(head.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    scheduler = step_decay(optimizer, cfg.milestones)
    val_x, val_y = val.x.to(device), val.y.to(device)
    test_x, test_y = test.x.to(device), test.y.to(device)
    batches = iter(progress.timed(train_batches) if progress else train_batches)

    def train_step(_step: int) -> None:
        images, labels = next(batches)
        with torch.no_grad():
            feats = backbone(images.to(device)).flatten(1).float()
        labels = label_targets(labels).to(device)
        sgd_step(head_loss(head(feats), labels), optimizer, scheduler)

    @torch.no_grad()
    def evaluate() -> Tuple[float, float, np.ndarray]:
        logits = head(test_x)
        return (score(head(val_x), val_y), score(logits, test_y),
                compact_predictions(logits, test_y))

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the crops and flips of the in-process transforms
        test_score, best_val, best_step, curve, predictions = run_schedule(
            train_step, evaluate, cfg.iterations, cfg.eval_every, progress,
            _resume(head, optimizer, scheduler, state, saved))
    return Trial(test_score, best_val, best_step, curve, AUGMENTED,
                 metric_for(val.multi_label), seed, predictions)


def _resume(head, optimizer, scheduler, state, saved) -> Optional[Resume]:
    """Save/restore of the head, its optimiser and schedule (``state`` None: none)."""
    if state is None:
        return None

    def snapshot() -> dict:
        return {"head": head.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict()}

    def restore(modules: dict) -> None:
        head.load_state_dict(modules["head"])
        optimizer.load_state_dict(modules["optimizer"])
        scheduler.load_state_dict(modules["scheduler"])
    return Resume(saved, state, snapshot, restore)
