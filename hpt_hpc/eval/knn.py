"""k-nearest-neighbour evaluation on frozen features (the weighted vote of InstDisc and
DINO): each query's ``k`` most cosine-similar training images vote for their labels
with weight ``exp(similarity / temperature)``; the class with the largest vote wins (for
multi-label data each class's share of the vote is its score, scored by AUROC). The
weights are normalised over the ``k`` neighbours with the largest similarity subtracted
first (a softmax), so no temperature overflows: ``exp(1 / 0.005)`` is not a float32.
Deterministic; the similarities are computed in chunks (bounded memory)."""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from .metrics import compact_predictions, metric_for, score
from .probe import KNN, Features, Trial, num_classes_of

CHUNK = 1024


def knn_scores(train: Features, queries: Features, k: int, temperature: float,
               num_classes: int) -> torch.Tensor:
    """Per-class share of every query's vote (N, classes): the neighbours' weights
    ``exp(similarity / temperature)`` normalised to sum to 1, summed per label (float64)."""
    bank = F.normalize(train.x.float(), dim=1)
    labels = train.y.float() if train.multi_label else \
        F.one_hot(train.y.long(), num_classes).float()
    k = min(int(k), bank.shape[0])
    out = []
    for start in range(0, queries.x.shape[0], CHUNK):
        q = F.normalize(queries.x[start:start + CHUNK].float(), dim=1)
        _, idx = (q @ bank.T).topk(k, dim=1)
        # the k similarities again in float64 (a small T magnifies float32's rounding);
        # exp((s - s_max) / T) <= 1; the total is summed with the votes (a column of
        # ones), so a class every neighbour has gets a share of exactly 1
        q64 = F.normalize(queries.x[start:start + CHUNK].double(), dim=1)
        sims = (q64.unsqueeze(1) * F.normalize(train.x[idx].double(), dim=2)).sum(-1)
        weights = ((sims - sims.max(dim=1, keepdim=True).values) / temperature).exp()
        voters = torch.cat([labels[idx].double(), labels.new_ones(idx.shape + (1,)).double()],
                           dim=2)
        votes = (weights.unsqueeze(-1) * voters).sum(1)
        out.append(votes[:, :-1] / votes[:, -1:])
    return torch.cat(out)


def _as_logits(votes: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """What the stored predictions take: the votes (argmax) for one label per image; for
    multi-label data their log-odds, so that the sigmoid they apply gives back each
    class's share of the vote."""
    return torch.logit(votes, eps=1e-12) if multi_label else votes


def knn_probe(train: Features, val: Features, test: Features, k: int,
              temperature: float) -> Trial:
    """Val and test scores of the kNN classifier (``best_step`` 0: nothing is trained);
    its mode names the neighbours that voted, ``knn (k=<k>)`` (``k`` capped at the
    training images)."""
    classes = num_classes_of(train, val, test)
    val_scores, test_scores = (knn_scores(train, split, k, temperature, classes)
                               for split in (val, test))
    voted = min(int(k), train.x.shape[0])
    return Trial(score(test_scores, test.y), score(val_scores, val.y), 0, [],
                 f"{KNN} (k={voted})", metric_for(train.multi_label), 0,
                 compact_predictions(_as_logits(test_scores, train.multi_label), test.y))


def knn_trials(inputs) -> List[Trial]:
    """The knn mode's runner: one vote on the cached features of ``inputs``
    (:class:`~hpt_hpc.eval.runner.ProbeInputs`), whatever probe.repeats says."""
    feats, probe = inputs.features(), inputs.cfg.probe
    return [knn_probe(feats["train"], feats["val"], feats["test"], probe.knn_k,
                      probe.knn_temperature)]
