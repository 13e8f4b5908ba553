"""Loader factory: ``data.backend`` picks the torchvision loaders
(:mod:`hpt_hpc.data.loader`) or the NVIDIA DALI ones (:mod:`hpt_hpc.data.dali_loader`,
imported only when asked for). Both have the same interface, so the stage engine and the
evaluation code do not know which they get.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional, Sequence

from ..config.schema import BACKENDS
from ..errors import HptError
from .loader import EvalLoader, PretrainLoader
from .shard_set import ShardTable
from .sources import DatasetError, ImageRecord

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, DataConfig, ProbeConfig

__all__ = ["BACKENDS", "build_eval_loader", "build_pretrain_loader"]

log = logging.getLogger(__name__)
_warned = []


def _check_backend(data_cfg: "DataConfig") -> None:
    if data_cfg.backend not in BACKENDS:
        raise HptError(f"data.backend {data_cfg.backend!r} is not one of "
                       f"{', '.join(BACKENDS)}")


def _dali_loaders(data_cfg: "DataConfig"):
    """The DALI loader module for ``data.backend: dali``; None (torchvision loaders) for the
    torchvision backend or when DALI cannot be imported (said once per process)."""
    if data_cfg.backend != "dali":
        return None
    try:
        from . import dali_loader
    except ImportError as exc:
        if not _warned:
            _warned.append(exc)
            log.warning("data.backend is 'dali' but NVIDIA DALI cannot be imported (%s): "
                        "using the torchvision backend. For DALI install hpt-hpc with the "
                        "extra of your CUDA major version: [dali-cuda12] or [dali-cuda13]",
                        exc)
        return None
    return dali_loader


def _dali_shards(dali, table: ShardTable):
    """The DALI shard loaders' module when DALI is asked for and can read ``table`` as it
    is (:func:`~hpt_hpc.data.dali_shards.dali_ready`); else None (torchvision shard
    loaders: said once per split)."""
    if dali is None:
        return None
    from . import dali_shards
    if dali_shards.dali_ready(table):
        return dali_shards
    where = table.manifest.get("source", {})
    if where not in _warned:
        _warned.append(where)
        indirect = table.manifest.get("dali_indirect", {})
        log.warning("%s of the %d packed images of %s (e.g. %s) are not decoded by DALI as "
                    "the reference decodes them (CMYK, alpha, 16-bit, TIFF, damaged): these "
                    "shards are read by the torchvision loaders", indirect.get("count", "?"),
                    len(table), where.get("root"), ", ".join(indirect.get("examples", [])[:3]))
    return None


def build_pretrain_loader(records: Sequence[ImageRecord], aug_cfg: "AugmentConfig",
                          data_cfg: "DataConfig", batch_size: int, seed: int, rank: int = 0,
                          world_size: int = 1, workers: Optional[int] = None,
                          start_epoch: int = 0, start_step: int = 0,
                          fill_skipped: bool = True):
    """The pretraining loader (2 global + ``augment.local_crops.number`` local views) for
    one rank: a :class:`~hpt_hpc.data.loader.PretrainLoader`, or with ``data.backend:
    dali`` a :class:`~hpt_hpc.data.dali_loader.DaliPretrainLoader`."""
    _check_backend(data_cfg)
    dali = _dali_loaders(data_cfg)
    if isinstance(records, ShardTable):
        if not records.complete:
            raise DatasetError("a subset of packed shards cannot be streamed for pretraining;"
                               " pack the subset (`hpt-hpc data shard`) instead")
        if _dali_shards(dali, records) is not None:
            return _dali_shards(dali, records).DaliShardPretrainLoader(
                records, aug_cfg, data_cfg, batch_size, seed, rank, world_size, workers,
                start_epoch, start_step, fill_skipped)
        from .shard_loader import ShardPretrainLoader
        return ShardPretrainLoader(records, aug_cfg, data_cfg, batch_size, seed, rank,
                                   world_size, workers, start_epoch, start_step, fill_skipped)
    if dali is not None:
        return dali.DaliPretrainLoader(
            records, aug_cfg, data_cfg, batch_size, seed, rank, world_size, workers,
            start_epoch, start_step, fill_skipped)
    return PretrainLoader(records, aug_cfg, data_cfg, batch_size, seed, rank, world_size,
                          workers, start_epoch, start_step, fill_skipped)


def build_eval_loader(records: Sequence[ImageRecord], data_cfg: "DataConfig",
                      batch_size: int, train: bool = False, workers: Optional[int] = None,
                      num_classes: Optional[int] = None, multi_label: Optional[bool] = None,
                      seed: int = 0, probe: Optional["ProbeConfig"] = None):
    """Evaluation (``train=False``: test view) or probe-training (``train=True``: training
    view) loader with the transforms of ``eval_spec(data_cfg, probe)`` (``probe`` None:
    :class:`~hpt_hpc.config.ProbeConfig` defaults): an
    :class:`~hpt_hpc.data.loader.EvalLoader`, or with ``data.backend: dali`` a
    :class:`~hpt_hpc.data.dali_loader.DaliEvalLoader`."""
    _check_backend(data_cfg)
    dali = _dali_loaders(data_cfg)
    if isinstance(records, ShardTable):  # images read by offset from the tars
        if records.complete and _dali_shards(dali, records) is not None:
            return _dali_shards(dali, records).DaliShardEvalLoader(
                records, data_cfg, batch_size, train, workers, num_classes, multi_label,
                seed, probe)
        dali = None
    if dali is not None:
        return dali.DaliEvalLoader(records, data_cfg, batch_size, train, workers,
                                              num_classes, multi_label, seed, probe)
    return EvalLoader(records, data_cfg, batch_size, train, workers, num_classes,
                      multi_label, seed, probe)
