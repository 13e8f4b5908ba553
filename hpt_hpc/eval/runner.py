"""Evaluate a checkpoint (or a reference: raw pixels, random init) on a dataset's splits.

The runners of the protocol table (:mod:`hpt_hpc.config.protocols`), each returning the
protocol's :class:`~hpt_hpc.eval.record.EvalRecord` (coordinates left to the caller) and
its :class:`~hpt_hpc.eval.probe.Trial` list:

* :func:`evaluate_linear` - linear separability in ``probe.mode`` (the mode's runner,
  given the :class:`ProbeInputs`), ``probe.repeats`` seeds -> :func:`linear_record`;
* :func:`evaluate_pixels` - the raw-pixel reference (always cached);
* :func:`evaluate_finetune` - semi-supervised transfer -> :func:`finetune_record`.

Checkpoints are local files here; references (``stage:``, ``models:/``...) are resolved by
the caller (:mod:`hpt_hpc.eval.execute`).
"""
from __future__ import annotations

import importlib
import statistics
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..config import ExperimentConfig
from ..config.protocols import FINETUNE, LINEAR, LINEAR_MODES, PROTOCOLS
from ..data import build_eval_loader
from ..data.specs import eval_spec
from ..data.transforms import build_eval_transform, build_probe_train_transform
from ..errors import HptError
from ..models import backbone_for_features, encoder_from_config, load_backbone_into, read_weights
from ..progress import Progress
from .augmented import augmented_probe
from .decoded import decoded_batches
from .finetune import finetune, select_label_budget
from .probe import Features, Trial, extract_features, linear_probe, pixel_features
from .record import EvalRecord, Predictions, mean_curve
from .resume import NONE, Checkpoints, EvalState
from .splits import SPLITS, SplitRecords, image_batches, kept_paths, load_splits

PIXELS_MODE = "cached (raw pixels)"
EXTRACT_BATCH = 256
Evaluation = Tuple[EvalRecord, List[Trial]]


def table_function(dotted: str) -> Callable:
    """The function a protocol table entry names (``"module:function"``)."""
    module, name = dotted.split(":")
    return getattr(importlib.import_module(module), name)


def linear_record(trials: List[Trial], test: Features) -> EvalRecord:
    """The linear protocol's record: mean and sample std (0 for one) of the trials' test
    scores at their best val scores, their mean val score, best step and curve, and every
    trial's predictions on ``test`` (whose labels and paths they refer to)."""
    scores = [t.score for t in trials]
    return EvalRecord(
        LINEAR, "", "", mode=trials[0].mode, metric=trials[0].metric,
        score=statistics.fmean(scores),
        score_std=statistics.stdev(scores) if len(scores) > 1 else 0.0,
        val_score=statistics.fmean(t.val_score for t in trials),
        best_step=statistics.fmean(t.best_step for t in trials), repeats=len(trials),
        per_repeat=scores, curve=mean_curve([t.curve for t in trials]),
        predictions=Predictions(np.stack([t.predictions for t in trials]), test.y.numpy(),
                                list(test.paths or [])))


def finetune_record(trial: Trial, targets: np.ndarray, paths: List[str]) -> EvalRecord:
    """The fine-tuning protocol's record: one trial, its mode naming the label budget."""
    return EvalRecord(FINETUNE, "", "", mode=f"{trial.mode} ({trial.labels} labels)",
                      metric=trial.metric, score=trial.score, val_score=trial.val_score,
                      best_step=trial.best_step, per_repeat=[trial.score],
                      curve=list(trial.curve),
                      predictions=Predictions(np.stack([trial.predictions]),
                                              np.asarray(targets), list(paths)))


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
                   ) -> Trial:
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


@dataclass
class ProbeInputs:
    """What a linear mode's runner is given: the config, the backbone, the splits and
    where a requeued job resumes; :meth:`features` (cached features of every split, saved
    for a requeue) or :meth:`held_out` (val and test only) set ``test``, the features the
    trials' predictions refer to."""

    cfg: ExperimentConfig
    dataset: str
    backbone: torch.nn.Module
    device: torch.device
    space: SplitRecords
    checkpoints: Checkpoints
    test: Optional[Features] = field(default=None, repr=False)

    def features(self) -> Dict[str, Features]:
        feats = _cached(self.checkpoints.features, lambda: split_features(
            self.cfg, self.dataset, self.backbone, self.device, self.space))
        self.test = feats["test"]
        return feats

    def held_out(self) -> Dict[str, Features]:
        feats = _cached(self.checkpoints.features, lambda: _held_out(
            self.cfg, self.dataset, self.backbone, self.device, self.space))
        self.test = feats["test"]
        return feats

    @property
    def seeds(self) -> range:
        return _seeds(self.cfg)


def cached_trials(inputs: ProbeInputs) -> List[Trial]:
    """The cached mode's runner: a probe per seed on features extracted once."""
    feats = inputs.features()  # shared by repeats
    return [probe_features(inputs.cfg, feats, seed) for seed in inputs.seeds]


def augmented_trials(inputs: ProbeInputs) -> List[Trial]:
    """The augmented mode's runner: a probe per seed on augmented training batches."""
    cfg, space, checkpoints = inputs.cfg, inputs.space, inputs.checkpoints
    held_out = inputs.held_out()
    trials = []
    for seed in inputs.seeds:
        state = checkpoints.schedule(seed)
        saved = state.load()
        train = image_batches(cfg, space.records["train"], space,
                              build_probe_train_transform(cfg.data, cfg.probe),
                              cfg.probe.batch_size, steps=cfg.probe.iterations,
                              seed=seed, start=int(saved["step"]) if saved else 0)
        trials.append(augmented_probe(inputs.backbone, train, held_out["val"],
                                      held_out["test"], cfg.probe, inputs.device, seed,
                                      space.num_classes,
                                      _progress(cfg, f"augmented probe (seed {seed})",
                                                cfg.probe.iterations, cfg.probe.batch_size),
                                      state, saved))
    return trials


def evaluate_linear(cfg: ExperimentConfig, dataset: str, checkpoint: Optional[str],
                    device, checkpoints: Checkpoints = NONE) -> Evaluation:
    """Linear separability of a checkpoint's frozen backbone (``None``: random init, drawn
    from ``cfg.seed``) in ``cfg.probe.mode`` (its runner in the protocol table), repeated
    ``cfg.probe.repeats`` times for a trained mode; ``checkpoints``: where a requeued job
    finds its features and training state."""
    mode = PROTOCOLS[LINEAR].mode(cfg.probe.mode)
    if mode is None:
        raise HptError(f"probe.mode '{cfg.probe.mode}' is not one of "
                       f"{', '.join(LINEAR_MODES)}")
    device = torch.device(device)
    inputs = ProbeInputs(cfg, dataset, seeded_backbone(cfg, checkpoint).to(device), device,
                         load_splits(cfg, dataset), checkpoints)
    trials = table_function(mode.runner)(inputs)
    return linear_record(trials, inputs.test), trials


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


def evaluate_pixels(cfg: ExperimentConfig, dataset: str) -> Evaluation:
    """The raw-pixel reference: ``cfg.probe.repeats`` cached probes on normalised pixels."""
    feats = split_features(cfg, dataset, None, torch.device("cpu"))
    trials = [probe_features(cfg, feats, seed) for seed in _seeds(cfg)]
    for trial in trials:
        trial.mode = PIXELS_MODE
    return linear_record(trials, feats["test"]), trials


def evaluate_finetune(cfg: ExperimentConfig, dataset: str, checkpoint: Optional[str],
                      device, checkpoints: Checkpoints = NONE) -> Evaluation:
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
    progress = _progress(cfg, "fine-tune", ft.iterations, min(ft.batch_size, len(budget)))
    trial, targets = finetune(backbone, backbone.feature_dim, train, *held_out, ft, device,
                              space.num_classes, space.multi_label, seed=cfg.seed,
                              progress=progress, state=state, saved=saved)
    trial.labels = len(budget)
    return (finetune_record(trial, targets, kept_paths(space.records["test"], held_out[1])),
            [trial])
