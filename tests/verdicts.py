"""Synthetic evaluation records with per-image predictions of a planted accuracy."""
from __future__ import annotations

import zlib
from typing import Optional

import numpy as np

from hpt_hpc.eval.record import EvalRecord, Predictions

N = 1000
TARGETS = np.arange(N) % 10


def predictions_with_accuracy(accuracy: float, seed: int, repeats: int = 1) -> np.ndarray:
    """Predicted classes that are right on a random ``accuracy`` share of the images."""
    rng = np.random.default_rng(seed)
    out = np.tile(TARGETS, (repeats, 1))
    wrong = rng.random((repeats, N)) >= accuracy
    out[wrong] = (out[wrong] + 1) % 10
    return out.astype(np.int16)


def record(method: str, steps: int, seed: int, accuracy: float, mode: str = "cached",
           preds: Optional[np.ndarray] = None, **coords) -> EvalRecord:
    # crc32, not hash(): str hashes change per process (PYTHONHASHSEED), and so did the data
    if preds is None:
        preds = predictions_with_accuracy(accuracy, seed=zlib.crc32(
            f"{method}|{steps}|{seed}|{mode}|{sorted(coords.items())}".encode()))
    return EvalRecord("linear", method, "mnist", mode, "top1",
                      float((preds[0] == TARGETS).mean()), steps=steps, seed=seed,
                      predictions=Predictions(preds, TARGETS,
                                              [f"img{i}.png" for i in range(N)]), **coords)
