"""Test-view batches of an evaluation split, decoded once per process and reused.

An in-process sweep (the quickstart, ``--executor debug``) evaluates many checkpoints on
the same splits, and each evaluation decoded and transformed the same images again with
the same deterministic test transform. :func:`decoded_batches` keeps a split's batches in
memory — keyed by its records and every setting the test view depends on, at most
:data:`CACHE_BYTES` in all (least recently used dropped first) — so a split is decoded
once; the batches are the loader's own tensors. Splits larger than the budget are
streamed as before.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Hashable, List, Tuple

import torch

CACHE_BYTES = 512 * 2**20  # decoded evaluation images this process keeps

_CACHE: "OrderedDict[Hashable, DecodedSplit]" = OrderedDict()


class DecodedSplit:
    """A loader's ``(images, labels)`` batches held in memory, with its ``skipped``."""

    def __init__(self, batches: List[Tuple[torch.Tensor, torch.Tensor]], skipped):
        self.batches, self.skipped = batches, skipped
        self.nbytes = sum(x.nbytes + y.nbytes for x, y in batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def decoded_batches(key: Hashable, expected_bytes: int, build: Callable[[], object]):
    """The batches of ``build()`` (a loader with ``skipped``): from memory when ``key`` was
    decoded before, else decoded now and kept while they fit :data:`CACHE_BYTES`."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    loader = build()
    if expected_bytes > CACHE_BYTES:
        return loader
    decoded = DecodedSplit([(x, y) for x, y in loader], loader.skipped)
    _CACHE[key] = decoded
    while sum(d.nbytes for d in _CACHE.values()) > CACHE_BYTES:
        _CACHE.popitem(last=False)
    return decoded
