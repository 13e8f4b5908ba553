"""Evaluate a checkpoint (or a reference: raw pixels, random init) on a dataset's splits.

The entry points the CLI and the sweeps call:

* :func:`evaluate_linear` - linear separability, ``probe.mode`` ``cached`` or
  ``augmented``, ``probe.repeats`` seeds -> :class:`LinearSummary` (mean +- std);
* :func:`evaluate_pixels` - the raw-pixel reference (always cached);
* :func:`evaluate_finetune` - semi-supervised transfer -> :class:`FinetuneResult`.

Checkpoints are local files here; references (``stage:``, ``models:/``...) are resolved by
the caller (:mod:`hpt_hpc.eval.execute`).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data import build_eval_loader
from ..data.specs import eval_spec
from ..data.transforms import build_eval_transform, build_probe_train_transform
from ..errors import HptError
from ..models import backbone_for_features, encoder_from_config, load_backbone_into, read_weights
from ..progress import Progress
from .augmented import augmented_probe
from .decoded import decoded_batches
from .finetune import FinetuneResult, finetune, select_label_budget
from .knn import knn_probe
from .probe import (AUGMENTED, CACHED, KNN, Features, ProbeResult, extract_features,
                    linear_probe, pixel_features)
from .resume import NONE, Checkpoints, EvalState
from .splits import SPLITS, SplitRecords, image_batches, kept_paths, load_splits

PIXELS_MODE = "cached (raw pixels)"
EXTRACT_BATCH = 256


@dataclass
class LinearSummary:
    """``repeats`` linear probes of one backbone: mean and sample std (0 for one probe) of
    their test scores at the best val score. ``mode``: cached | augmented | knn (k=<k>) |
    cached (raw pixels); ``metric``: top1 | auroc (described by its
    :class:`~hpt_hpc.eval.record.EvalRecord`). The ``test_at_best_val`` / ``best_val`` /
    ``best_step`` / ``curve`` properties let it stand in for a :class:`ProbeResult`."""

    mean: float
    std: float
    results: List[ProbeResult]
    mode: str
    metric: str
    dataset: str = ""
    checkpoint: Optional[str] = None
    test_targets: Optional[np.ndarray] = None  # the test labels the predictions score
    test_paths: Optional[List[str]] = None

    @property
    def test_at_best_val(self) -> float:
        return self.mean

    @property
    def best_val(self) -> float:
        return statistics.fmean(r.best_val for r in self.results)

    @property
    def best_step(self) -> int:
        return self.results[0].best_step

    @property
    def curve(self) -> List[Tuple[int, float, float]]:
        return self.results[0].curve

    @property
    def repeats(self) -> int:
        return len(self.results)


def summarize(results: List[ProbeResult], mode: str, dataset: str = "",
              checkpoint: Optional[str] = None, test: Optional[Features] = None,
              ) -> LinearSummary:
    """Mean and sample std of the probes' test scores at their best val scores
    (``test``: the test features, whose labels and paths the predictions refer to)."""
    scores = [r.test_at_best_val for r in results]
    std = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return LinearSummary(statistics.fmean(scores), std, list(results), mode,
                         results[0].metric, dataset, checkpoint,
                         test.y.numpy() if test is not None else None,
                         test.paths if test is not None else None)


def backbone_from_checkpoint(cfg: ExperimentConfig, path: Optional[str]) -> torch.nn.Module:
    """The backbone of ``cfg.model`` (no head: forward gives pooled features) with the
    backbone weights of a checkpoint of any accepted layout and ssl method, or randomly
    initialised when ``path`` is ``None``."""
    encoder = encoder_from_config(cfg.model, cfg.data.image_size)
    if path is not None:
        weights = read_weights(path)
        load_backbone_into(encoder, weights.backbone,
                           f"checkpoint {path} ({weights.layout} layout)",
                           adapt=weights.layout != "hpt-hpc")
    return backbone_for_features(encoder)


def seeded_backbone(cfg: ExperimentConfig, path: Optional[str]) -> torch.nn.Module:
    """:func:`backbone_from_checkpoint` with a random init drawn from ``cfg.seed`` (the
    global RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        return backbone_from_checkpoint(cfg, path)


def _split_batches(cfg: ExperimentConfig, space: SplitRecords, split: str):
    """The test-view batches of ``split``, decoded once per process (see
    :mod:`hpt_hpc.eval.decoded`)."""
    records, spec = space.records[split], eval_spec(cfg.data, cfg.probe)
    key = (tuple(records), spec, cfg.data.backend, cfg.data.device, cfg.data.max_pixels,
           space.num_classes, space.multi_label)
    return decoded_batches(key, len(records) * spec.channels * spec.size ** 2 * 4,
                           lambda: build_eval_loader(records, cfg.data,
                                                     batch_size=EXTRACT_BATCH, train=False,
                                                     num_classes=space.num_classes,
                                                     multi_label=space.multi_label,
                                                     probe=cfg.probe))


def _progress(cfg: ExperimentConfig, label: str, total: int, images_per_step: int
              ) -> Progress:
    """A progress reporter of an evaluation loop (every ``cfg.progress_seconds``)."""
    return Progress(label, total, cfg.progress_seconds, images_per_step=images_per_step)


def _extract(cfg: ExperimentConfig, backbone: torch.nn.Module, batches, device,
             label: str) -> Features:
    total = len(batches) if hasattr(batches, "__len__") else 0
    return extract_features(backbone, batches, device,
                            _progress(cfg, f"features {label}", total, EXTRACT_BATCH))


def split_features(cfg: ExperimentConfig, dataset: str,
                   backbone: Optional[torch.nn.Module], device: torch.device,
                   space: Optional[SplitRecords] = None) -> Dict[str, Features]:
    """Features of every split (data pipeline's eval transform); raw pixels when
    ``backbone`` is ``None``."""
    space = space or load_splits(cfg, dataset)
    out = {}
    for split in SPLITS:
        batches = _split_batches(cfg, space, split)
        out[split] = (pixel_features(batches) if backbone is None
                      else _extract(cfg, backbone.to(device), batches, device,
                                    f"{dataset}/{split}"))
        out[split].paths = kept_paths(space.records[split], batches)
    return out


def probe_features(cfg: ExperimentConfig, feats: Dict[str, Features], seed: int = 0,
                   ) -> ProbeResult:
    """One cached-mode probe on extracted features."""
    return linear_probe(feats["train"], feats["val"], feats["test"], cfg.probe, seed=seed,
                        progress=_progress(cfg, f"probe (seed {seed})", cfg.probe.iterations,
                                           min(cfg.probe.batch_size, len(feats["train"].y))))


def _seeds(cfg: ExperimentConfig) -> range:
    return range(cfg.seed, cfg.seed + cfg.probe.repeats)


def _cached(saved: EvalState, compute) -> Dict[str, Features]:
    """Features from a resumed job's saved copy, else computed and saved."""
    state = saved.load()
    if state is not None:
        return {split: Features(f["x"], f["y"], list(f["paths"]))
                for split, f in state["features"].items()}
    feats = compute()
    saved.save({"features": {split: {"x": f.x, "y": f.y, "paths": list(f.paths or [])}
                             for split, f in feats.items()}})
    return feats


def evaluate_linear(cfg: ExperimentConfig, dataset: str, checkpoint: Optional[str],
                    device, checkpoints: Checkpoints = NONE) -> LinearSummary:
    """Linear separability of a checkpoint's frozen backbone (``None``: random init, drawn
    from ``cfg.seed``) in ``cfg.probe.mode``, repeated ``cfg.probe.repeats`` times;
    ``checkpoints``: where a requeued job finds its features and training state."""
    device = torch.device(device)
    backbone = seeded_backbone(cfg, checkpoint).to(device)
    space = load_splits(cfg, dataset)
    if cfg.probe.mode in (CACHED, KNN):
        feats = _cached(checkpoints.features,  # shared by repeats
                        lambda: split_features(cfg, dataset, backbone, device, space))
        if cfg.probe.mode == KNN:  # deterministic: one result, whatever probe.repeats says
            results = [knn_probe(feats["train"], feats["val"], feats["test"],
                                 cfg.probe.knn_k, cfg.probe.knn_temperature)]
        else:
            results = [probe_features(cfg, feats, seed) for seed in _seeds(cfg)]
    elif cfg.probe.mode == AUGMENTED:
        held_out = _cached(checkpoints.features,
                           lambda: _held_out(cfg, dataset, backbone, device, space))
        results = []
        for seed in _seeds(cfg):
            state = checkpoints.schedule(seed)
            saved = state.load()
            train = image_batches(cfg, space.records["train"], space,
                                  build_probe_train_transform(cfg.data, cfg.probe),
                                  cfg.probe.batch_size, steps=cfg.probe.iterations,
                                  seed=seed, start=int(saved["step"]) if saved else 0)
            results.append(augmented_probe(backbone, train, held_out["val"],
                                           held_out["test"], cfg.probe, device, seed,
                                           space.num_classes,
                                           _progress(cfg, f"augmented probe (seed {seed})",
                                                     cfg.probe.iterations,
                                                     cfg.probe.batch_size), state, saved))
    else:
        raise HptError(f"probe.mode '{cfg.probe.mode}' is not one of {CACHED}, {AUGMENTED}, "
                       f"{KNN}")
    test = held_out["test"] if cfg.probe.mode == AUGMENTED else feats["test"]
    mode = results[0].mode if cfg.probe.mode == KNN else cfg.probe.mode  # knn (k=<k>)
    return summarize(results, mode, dataset, checkpoint, test)


def _held_out(cfg: ExperimentConfig, dataset: str, backbone, device,
              space: SplitRecords) -> Dict[str, Features]:
    """Val and test features for the augmented probe (its test view)."""
    held_out = {}
    for split in ("val", "test"):
        batches = image_batches(cfg, space.records[split], space,
                                build_eval_transform(cfg.data, cfg.probe), EXTRACT_BATCH)
        held_out[split] = _extract(cfg, backbone, batches, device, f"{dataset}/{split}")
        held_out[split].paths = kept_paths(space.records[split], batches)
    return held_out


def evaluate_pixels(cfg: ExperimentConfig, dataset: str) -> LinearSummary:
    """The raw-pixel reference: ``cfg.probe.repeats`` cached probes on normalised pixels."""
    feats = split_features(cfg, dataset, None, torch.device("cpu"))
    results = [probe_features(cfg, feats, seed) for seed in _seeds(cfg)]
    for result in results:
        result.mode = PIXELS_MODE
    return summarize(results, PIXELS_MODE, dataset, None, feats["test"])


def evaluate_finetune(cfg: ExperimentConfig, dataset: str, checkpoint: Optional[str],
                      device, checkpoints: Checkpoints = NONE) -> FinetuneResult:
    """Semi-supervised transfer: fine-tune a checkpoint's backbone (``None``: random init)
    plus a new head on ``cfg.finetune.labels`` training images chosen with
    ``cfg.finetune.label_seed``; test score at the best val score."""
    device = torch.device(device)
    ft = cfg.finetune
    space = load_splits(cfg, dataset)
    budget = select_label_budget(space.records["train"], ft.labels, ft.label_seed)
    backbone = seeded_backbone(cfg, checkpoint)
    state = checkpoints.schedule(cfg.seed)
    saved = state.load()
    train = image_batches(cfg, budget, space,
                          build_probe_train_transform(cfg.data, cfg.probe, ft.augment),
                          ft.batch_size, steps=ft.iterations, seed=cfg.seed,
                          start=int(saved["step"]) if saved else 0)
    held_out = [image_batches(cfg, space.records[split], space,
                              build_eval_transform(cfg.data, cfg.probe), EXTRACT_BATCH)
                for split in ("val", "test")]
    result = finetune(backbone, backbone.feature_dim, train,
                      *held_out, ft, device, space.num_classes, space.multi_label,
                      seed=cfg.seed, progress=_progress(cfg, "fine-tune", ft.iterations,
                                                        min(ft.batch_size, len(budget))),
                      state=state, saved=saved)
    result.labels = len(budget)
    result.test_paths = kept_paths(space.records["test"], held_out[1])
    return result
