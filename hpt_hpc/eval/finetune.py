"""Semi-supervised transfer: fine-tune the whole network (backbone in train mode plus a
new linear head) on a small, seeded label budget of the training split.

SGD with backbone rate ``lr`` and head rate ``lr * head_lr_mult``, x0.1 at ``milestones``;
val and test are scored every ``eval_every`` steps (network in eval mode) and the test
score at the best val score is reported with the whole curve.
"""
from __future__ import annotations

import random
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..config import FinetuneConfig
from ..config.protocols import FINETUNE
from ..data.sources import ImageRecord
from ..errors import HptError
from ..progress import Progress
from .metrics import compact_predictions, metric_for, score
from .probe import (Resume, Trial, head_loss, label_targets, new_head, run_schedule,
                    sgd_step, step_decay)



def select_label_budget(records: Sequence[ImageRecord], n: int, seed: int,
                        ) -> List[ImageRecord]:
    """``n`` labelled records, every class among them, chosen by a ``seed``-ed shuffle.

    First, for each class (in label order) not yet covered, the first record of the
    shuffled order that carries it; then the rest of the shuffled order up to ``n``.
    Returned in listing order.
    """
    labelled = [i for i, r in enumerate(records) if r.labels]
    classes = sorted({lab for i in labelled for lab in records[i].labels})
    if n > len(labelled):
        raise HptError(f"label budget {n} exceeds the {len(labelled)} labelled training "
                       "images; lower finetune.labels (--labels)")
    if n < len(classes):
        raise HptError(f"label budget {n} is below the {len(classes)} classes; "
                       "finetune.labels (--labels) needs at least one image per class")
    order = labelled[:]
    random.Random(seed).shuffle(order)
    chosen: List[int] = []
    covered: set = set()
    for cls in classes:
        if cls not in covered:
            pick = next(i for i in order if cls in records[i].labels)
            chosen.append(pick)
            covered.update(records[pick].labels)
    taken = set(chosen)
    chosen += [i for i in order if i not in taken][:n - len(chosen)]
    return _subset(records, sorted(chosen))


def per_class_budget(records: Sequence[ImageRecord], per_class: int, seed: int,
                     ) -> List[ImageRecord]:
    """``per_class`` labelled records of every class (all of a class that has fewer),
    chosen by a ``seed``-ed shuffle; returned in listing order."""
    if per_class < 1:
        raise HptError(f"probe.labels_per_class must be at least 1, got {per_class}")
    order = [i for i, r in enumerate(records) if r.labels]
    random.Random(seed).shuffle(order)
    taken: dict = {}
    chosen = set()
    for i in order:
        wanted = [c for c in records[i].labels if taken.get(c, 0) < per_class]
        if wanted:
            chosen.add(i)
            for c in records[i].labels:
                taken[c] = taken.get(c, 0) + 1
    return _subset(records, sorted(chosen))


def _subset(records: Sequence[ImageRecord], indices: List[int]):
    """The records at ``indices``: a table of the same kind for a table (packed shards
    stay readable from their tars), else a list."""
    take = getattr(records, "take", None)
    return take(indices) if take is not None else [records[i] for i in indices]


def finetune_optimizer(backbone: torch.nn.Module, head: torch.nn.Module,
                       cfg: FinetuneConfig) -> torch.optim.SGD:
    """SGD over two groups: backbone at ``lr``, head at ``lr * head_lr_mult``."""
    return torch.optim.SGD(
        [{"params": list(backbone.parameters()), "lr": cfg.lr, "name": "backbone"},
         {"params": list(head.parameters()), "lr": cfg.lr * cfg.head_lr_mult,
          "name": "head"}],
        lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@torch.no_grad()
def _logits(network: torch.nn.Module, batches: Iterable, device: torch.device):
    logits, targets = [], []
    for images, labels in batches:
        logits.append(network(images.to(device)).float().cpu())
        targets.append(label_targets(labels))
    return torch.cat(logits), torch.cat(targets)


def finetune(backbone: torch.nn.Module, feature_dim: int, train_batches: Iterable,
             val_batches: Iterable, test_batches: Iterable, cfg: FinetuneConfig,
             device: torch.device, num_classes: int, multi_label: bool, seed: int = 0,
             progress: Optional[Progress] = None, state=None,
             saved: Optional[dict] = None) -> Tuple[Trial, np.ndarray]:
    """Fine-tune ``backbone`` (in place) and a new head on ``train_batches`` (at least
    ``cfg.iterations`` batches); returns the trial (its ``labels`` left for the caller)
    and the test targets its predictions score."""
    head = new_head(feature_dim, num_classes, seed)
    network = torch.nn.Sequential(backbone, torch.nn.Flatten(1), head).to(device)
    for p in network.parameters():
        p.requires_grad_(True)
    optimizer = finetune_optimizer(backbone, head, cfg)
    scheduler = step_decay(optimizer, cfg.milestones)
    batches = iter(progress.timed(train_batches) if progress else train_batches)

    def train_step(_step: int) -> None:
        network.train()
        images, labels = next(batches)
        labels = label_targets(labels).to(device)
        sgd_step(head_loss(network(images.to(device)).float(), labels), optimizer, scheduler)

    seen = {}

    def evaluate() -> Tuple[float, float, np.ndarray]:
        network.eval()
        val = score(*_logits(network, val_batches, device))
        logits, seen["targets"] = _logits(network, test_batches, device)
        network.train()
        return val, score(logits, seen["targets"]), compact_predictions(logits, seen["targets"])

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the crops and flips of the in-process transforms
        test_score, best_val, best_step, curve, predictions = run_schedule(
            train_step, evaluate, cfg.iterations, cfg.eval_every, progress,
            _resume(network, optimizer, scheduler, seen, state, saved))
    return (Trial(test_score, best_val, best_step, curve, FINETUNE, metric_for(multi_label),
                  seed, predictions), seen["targets"].numpy())


def _resume(network, optimizer, scheduler, seen: dict, state, saved) -> Optional[Resume]:
    """Save/restore of the fine-tuned network, optimiser, schedule and the test targets
    (``state`` None: none)."""
    if state is None:
        return None

    def snapshot() -> dict:
        return {"network": network.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "targets": seen["targets"]}

    def restore(modules: dict) -> None:
        network.load_state_dict(modules["network"])
        optimizer.load_state_dict(modules["optimizer"])
        scheduler.load_state_dict(modules["scheduler"])
        seen["targets"] = modules["targets"]
    return Resume(saved, state, snapshot, restore)
