"""Probe a checkpoint (or a reference: raw pixels, random init) on a dataset's splits."""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import torch

from ..config import ExperimentConfig
from ..errors import HptError
from .probe import Features, ProbeResult, extract_features, linear_probe, pixel_features

SPLITS = ("train", "val", "test")


def _split_batches(cfg: ExperimentConfig, dataset: str, split: str, batch_size: int = 256):
    from ..data import build_eval_loader, list_split
    if dataset not in cfg.datasets:
        raise HptError(f"dataset '{dataset}' is not defined in the config")
    ds_cfg = dataclasses.replace(cfg.datasets[dataset], max_images=None)
    records, _ = list_split(ds_cfg, split)
    if split == "train" and cfg.probe.max_train_images:
        records = records[:cfg.probe.max_train_images]
    return build_eval_loader(records, cfg.data, batch_size=batch_size, train=False)


def backbone_from_checkpoint(cfg: ExperimentConfig, path: Optional[str]) -> torch.nn.Module:
    """The query encoder's backbone (projection head dropped) of a checkpoint, or a
    randomly initialised one when ``path`` is ``None``."""
    from ..models import MoCo, load_initial_weights
    model = MoCo.from_config(cfg.model, cfg.moco, queue_size=cfg.optim.batch_size)
    if path is not None:
        load_initial_weights(model, path)
    backbone = model.encoder_q
    backbone.fc = torch.nn.Identity()
    return backbone


def split_features(cfg: ExperimentConfig, dataset: str,
                   backbone: Optional[torch.nn.Module], device: torch.device,
                   ) -> Dict[str, Features]:
    """Features of every split; raw pixels when ``backbone`` is ``None``."""
    out = {}
    for split in SPLITS:
        batches = _split_batches(cfg, dataset, split)
        out[split] = (pixel_features(batches) if backbone is None
                      else extract_features(backbone.to(device), batches, device))
    return out


def probe_features(cfg: ExperimentConfig, feats: Dict[str, Features], seed: int = 0,
                   ) -> ProbeResult:
    return linear_probe(feats["train"], feats["val"], feats["test"], cfg.probe, seed=seed)


def probe_checkpoint(cfg: ExperimentConfig, dataset: str, checkpoint: Optional[str],
                     device: torch.device, seed: int = 0) -> ProbeResult:
    """Linear probe (cached-features mode) of a checkpoint's backbone on ``dataset``."""
    backbone = backbone_from_checkpoint(cfg, checkpoint)
    return probe_features(cfg, split_features(cfg, dataset, backbone, device), seed)


def probe_pixels(cfg: ExperimentConfig, dataset: str, seed: int = 0) -> ProbeResult:
    """Reference row: a linear probe on raw (normalised) pixels."""
    return probe_features(cfg, split_features(cfg, dataset, None, torch.device("cpu")), seed)
