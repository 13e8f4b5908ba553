"""Nearest-class-mean evaluation on frozen features: each class is the mean of its
L2-normalised training features; a val/test image goes to the class whose mean is most
cosine-similar to it. Nothing is trained, so it is deterministic (one trial, best step
0). Single-label data only: a multi-label dataset is refused in one line."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ..config.protocols import NCM
from ..errors import HptError
from .metrics import compact_predictions, metric_for, score
from .probe import Features, Trial, num_classes_of


def _refuse_multi_label(dataset: str) -> HptError:
    return HptError(f"probe mode {NCM} needs one label per image, but dataset '{dataset}' is "
                    f"multi-label; use probe.mode knn or cached (--mode)")


def class_means(train: Features, num_classes: int) -> torch.Tensor:
    """(classes, D) mean of each class's L2-normalised training features (float64), NaN
    rows for classes without training images."""
    x = F.normalize(train.x.double(), dim=1)
    one_hot = F.one_hot(train.y.long(), num_classes).double()
    counts = one_hot.sum(0)
    return (one_hot.T @ x) / counts.unsqueeze(1)


def ncm_similarities(means: torch.Tensor, queries: Features) -> torch.Tensor:
    """(N, classes) cosine similarity of every query to every class mean (-inf for a
    class without training images: it never wins)."""
    sims = F.normalize(queries.x.double(), dim=1) @ F.normalize(means.nan_to_num(0.0), dim=1).T
    return sims.masked_fill(torch.isnan(means[:, 0]).unsqueeze(0), float("-inf"))


def ncm_probe(train: Features, val: Features, test: Features, dataset: str = "") -> Trial:
    """Val and test top-1 of the nearest-class-mean classifier."""
    if train.multi_label:
        raise _refuse_multi_label(dataset)
    means = class_means(train, num_classes_of(train, val, test))
    val_sims, test_sims = ncm_similarities(means, val), ncm_similarities(means, test)
    return Trial(score(test_sims, test.y), score(val_sims, val.y), 0, [], NCM,
                 metric_for(False), 0, compact_predictions(test_sims, test.y))


def ncm_trials(inputs) -> List[Trial]:
    """The ncm mode's runner (:class:`~hpt_hpc.eval.runner.ProbeInputs`): refuses
    multi-label data before any feature is extracted."""
    if inputs.space.multi_label:
        raise _refuse_multi_label(inputs.dataset)
    feats = inputs.features()
    return [ncm_probe(feats["train"], feats["val"], feats["test"], inputs.dataset)]
