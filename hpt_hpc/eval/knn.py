"""k-nearest-neighbour evaluation on frozen features (the weighted vote of InstDisc and
DINO): each query's ``k`` most cosine-similar training images vote for their labels
with weight ``exp(similarity / temperature)``; the class with the largest vote wins (for
multi-label data the votes are per-class scores, scored by AUROC). Deterministic; the
similarities are computed in chunks (bounded memory)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .metrics import compact_predictions, metric_for, score
from .probe import KNN, Features, ProbeResult, num_classes_of

CHUNK = 1024


def knn_scores(train: Features, queries: Features, k: int, temperature: float,
               num_classes: int) -> torch.Tensor:
    """Per-class vote of every query (N, classes)."""
    bank = F.normalize(train.x.float(), dim=1)
    labels = train.y.float() if train.multi_label else \
        F.one_hot(train.y.long(), num_classes).float()
    k = min(int(k), bank.shape[0])
    out = []
    for start in range(0, queries.x.shape[0], CHUNK):
        q = F.normalize(queries.x[start:start + CHUNK].float(), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sims / temperature).exp()
        out.append((weights.unsqueeze(-1) * labels[idx]).sum(1))
    return torch.cat(out)


def knn_probe(train: Features, val: Features, test: Features, k: int,
              temperature: float) -> ProbeResult:
    """Val and test scores of the kNN classifier (``best_step`` 0: nothing is trained);
    its mode names the neighbours that voted, ``knn (k=<k>)`` (``k`` capped at the
    training images)."""
    classes = num_classes_of(train, val, test)
    val_scores = knn_scores(train, val, k, temperature, classes)
    test_scores = knn_scores(train, test, k, temperature, classes)
    voted = min(int(k), train.x.shape[0])
    return ProbeResult(score(test_scores, test.y), score(val_scores, val.y), 0, [],
                       f"{KNN} (k={voted})", metric_for(train.multi_label), 0,
                       compact_predictions(test_scores, test.y))
