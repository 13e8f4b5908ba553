"""MoCo-v2 (He et al. 2020; Chen et al. 2020) following facebookresearch/moco's builder:
the ssl method ``moco-v2`` (:class:`~hpt_hpc.ssl.base.SslMethod`).

``encoder_q``/``encoder_k`` are encoders (:mod:`hpt_hpc.models.backbones`: a built-in
ResNet or a timm model) whose ``fc`` is the projection head; with the built-in ResNets the
state_dict keys match the official checkpoints (``encoder_q.conv1.weight``,
``encoder_q.fc.0.weight``, ``encoder_q.fc.2.weight``, ``queue``). Backbones without
BatchNorm (ViTs) have no statistics to shuffle: shuffle-BN then changes nothing.

Behaviour kept from the official implementation:

* the momentum update runs inside ``forward`` (no grad) before the keys are computed;
* only *parameters* are momentum-averaged; ``encoder_k``'s BatchNorm running statistics are its
  own (updated by its own forward passes), never copied from ``encoder_q``;
* with ``torch.distributed`` initialised (world size > 1) keys are all-gathered before enqueueing
  and, with ``shuffle_bn``, the key batch is shuffled across ranks (shuffle-BN).

Differences: the queue accepts any batch size (writes wrap around), and in a single process
``shuffle_bn`` shuffles the key batch and runs ``encoder_k`` over ``bn_splits`` sub-batches so
that key BN statistics are computed per sub-batch. The momentum update is one fused
``_foreach_lerp_`` and the enqueue keeps its write position on the device (no host sync per
step). For gradient accumulation ``forward`` can skip the momentum update and hold its keys
back until the optimiser step's last micro-batch (see :meth:`MoCo.forward`); the contrastive
logits are computed in fp32 even under autocast.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..models.backbones import build_encoder
from .base import SslMethod
from .collectives import concat_all_gather, dist_world_size

log = logging.getLogger(__name__)


def projection_head(in_dim: int, dim: int, mlp: bool = True,
                    hidden: Optional[int] = None) -> nn.Module:
    """MoCo-v2 head ``Linear -> ReLU -> Linear`` (keys ``0.*``, ``2.*``), or one ``Linear``."""
    if not mlp:
        return nn.Linear(in_dim, dim)
    hidden = hidden or in_dim
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim))


def cap_queue_size(queue_size: int, num_images: int, batch_size: int) -> int:
    """Cap the queue length K to the dataset size.

    With K larger than the number of training images the queue holds several stale keys of
    every image (the paper's K=65536 vs. UC-Merced's 2,100 images), so K is reduced to
    ``num_images`` rounded down to a multiple of ``batch_size`` (the *global* batch, i.e. keys
    enqueued per step) and at least ``batch_size``; one log line says so. ``num_images``
    counts the images listed (which of them are unreadable is known only once read).
    """
    if queue_size < 1 or batch_size < 1:
        raise ValueError(f"queue_size and batch_size must be >= 1 (got {queue_size}, {batch_size})")
    if queue_size <= num_images:
        return queue_size
    capped = max(batch_size, (num_images // batch_size) * batch_size)
    log.info("MoCo queue size K=%d exceeds the %d images listed; using K=%d (rounded down "
             "to a multiple of the batch size %d) so that the queue never holds one image "
             "twice", queue_size, num_images, capped, batch_size)
    return capped


class MoCo(SslMethod):
    """MoCo-v2 with a momentum key encoder and a queue of negatives.

    ``forward(im_q, im_k)`` returns ``(loss, logits, labels)``: InfoNCE cross-entropy over
    ``1 + K`` logits (positive at index 0) divided by ``temperature``. When distributed, every
    rank must use the same per-rank batch size (e.g. ``drop_last=True``) for the all-gathers.
    """

    name = "moco-v2"
    backbone_key, target_key = "encoder_q.", "encoder_k."
    head_layouts = ("moco",)  # the official MoCo files carry this method's head

    def __init__(self, arch: str = "resnet18", width: float = 1.0, small_stem: bool = False,
                 in_channels: int = 3, dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2, mlp: bool = True,
                 mlp_hidden: Optional[int] = None, shuffle_bn: bool = True,
                 bn_splits: int = 2, stem_stride: int = 1, image_size: int = 224,
                 timm_kwargs: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.arch, self.width, self.small_stem, self.in_channels = arch, width, small_stem, in_channels
        self.dim, self.queue_size = dim, queue_size
        self.momentum, self.temperature = momentum, temperature
        self.mlp, self.shuffle_bn, self.bn_splits = mlp, shuffle_bn, max(1, int(bn_splits))

        self.encoder_q = build_encoder(arch, width, small_stem, in_channels, stem_stride,
                                       image_size, timm_kwargs)
        self.encoder_q.fc = projection_head(self.encoder_q.feature_dim, dim, mlp, mlp_hidden)
        self.mlp_hidden = (mlp_hidden or self.encoder_q.feature_dim) if mlp else None
        self.encoder_k = copy.deepcopy(self.encoder_q)
        for p in self.encoder_k.parameters():
            p.requires_grad = False

        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._held_keys: list = []  # keys of earlier micro-batches (gradient accumulation)

    @classmethod
    def from_config(cls, model_cfg, moco_cfg, queue_size: Optional[int] = None,
                    image_size: int = 224) -> "MoCo":
        """Build from ``ModelConfig`` + ``MocoConfig``; ``queue_size`` overrides ``moco_cfg``'s
        (e.g. the result of :func:`cap_queue_size`)."""
        return cls(arch=model_cfg.arch, width=model_cfg.width, small_stem=model_cfg.small_stem,
                   in_channels=model_cfg.in_channels, dim=moco_cfg.dim,
                   queue_size=queue_size if queue_size is not None else moco_cfg.queue_size,
                   momentum=moco_cfg.momentum, temperature=moco_cfg.temperature,
                   mlp=moco_cfg.mlp, mlp_hidden=moco_cfg.mlp_hidden,
                   shuffle_bn=moco_cfg.shuffle_bn, bn_splits=moco_cfg.bn_splits,
                   stem_stride=model_cfg.stem_stride, image_size=image_size,
                   timm_kwargs=model_cfg.timm_kwargs)

    @classmethod
    def for_stage(cls, cfg: Any, *, num_images: int, global_batch: int) -> "MoCo":
        """The stage's MoCo, its queue capped to what ``num_images`` can fill."""
        queue = cap_queue_size(cfg.moco.queue_size, num_images, global_batch)
        return cls.from_config(cfg.model, cfg.moco, queue_size=queue,
                               image_size=cfg.data.image_size)

    # -- the SslMethod interface ---------------------------------------------------------
    def online_encoder(self) -> nn.Module:
        return self.encoder_q

    def ema_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.encoder_k, self.encoder_q)]

    def ema_momentum(self, step: int, total: int) -> float:
        return self.momentum  # constant, applied inside forward (official order)

    def micro_batch(self, first: bool, last: bool) -> Dict[str, Any]:
        return {"update_key_encoder": first, "enqueue": last}

    def loss_of(self, out: Any) -> torch.Tensor:
        return out[0]

    def metrics_of(self, out: Any) -> Dict[str, float]:
        _, logits, labels = out
        return {"contrastive_acc": float((logits.argmax(dim=1) == labels).float().mean())}

    def facts(self) -> Dict[str, Any]:
        return {"queue_size": int(self.queue.shape[1])}

    def load_initial(self, path: str, strict: bool = True,
                     source: str = "") -> Dict[str, Any]:
        """:meth:`SslMethod.load_initial`; the queue is never loaded (a new stage starts
        with a fresh random queue). Report keys also ``encoder_k`` and ``queue_loaded``."""
        report = super().load_initial(path, strict, source)
        report.update({"encoder_k": "checkpoint" if report["targets_loaded"]
                       else "copied from encoder_q", "queue_loaded": False,
                       "note": ("queue not loaded: a new stage starts with a fresh random "
                                "queue" if report["layout"] == "hpt-hpc" else "")})
        return report

    @property
    def feature_dim(self) -> int:
        """Width of the backbone's pooled features (the head's input)."""
        return self.encoder_q.feature_dim

    def backbone_state_dict(self) -> dict:
        """``encoder_q``'s backbone weights with its library's keys (no head)."""
        return self.backbone_state()

    def sync_key_encoder(self) -> None:
        """Make ``encoder_k`` an exact copy of ``encoder_q`` (parameters and BN buffers)."""
        self.sync_targets()

    @torch.no_grad()
    def momentum_update(self) -> None:
        """``theta_k <- m * theta_k + (1 - m) * theta_q`` over all parameters (not buffers):
        one fused ``_foreach_lerp_`` per dtype/device group."""
        self.ema_update(self.momentum)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        """Write ``keys`` (N x dim) into the queue at ``queue_ptr``, wrapping around.

        The position stays a device tensor: no device-to-host copy, so no stall on a GPU.
        """
        keys = keys.detach().to(self.queue.dtype)
        if keys.shape[0] > self.queue_size:
            keys = keys[-self.queue_size:]
        n = keys.shape[0]
        idx = (self.queue_ptr + torch.arange(n, device=self.queue.device)) % self.queue_size
        self.queue.index_copy_(1, idx, keys.T)
        self.queue_ptr.add_(n).remainder_(self.queue_size)

    @torch.no_grad()
    def _batch_shuffle_ddp(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shuffle the global batch across ranks; returns this rank's slice and the inverse."""
        x_all = concat_all_gather(x)
        world, rank = dist.get_world_size(), dist.get_rank()
        idx_shuffle = torch.randperm(x_all.shape[0], device=x.device)
        dist.broadcast(idx_shuffle, src=0)  # every rank uses rank 0's permutation
        idx_unshuffle = torch.argsort(idx_shuffle)
        return x_all[idx_shuffle.view(world, -1)[rank]], idx_unshuffle

    @torch.no_grad()
    def _batch_unshuffle_ddp(self, x: torch.Tensor, idx_unshuffle: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`_batch_shuffle_ddp` for per-sample outputs ``x``."""
        x_all = concat_all_gather(x)
        world, rank = dist.get_world_size(), dist.get_rank()
        return x_all[idx_unshuffle.view(world, -1)[rank]]

    @torch.no_grad()
    def _split_bn_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Single-process shuffle-BN stand-in: shuffled sub-batches, each with its own BN stats."""
        n = im_k.shape[0]
        splits = min(self.bn_splits, n // 2)  # keep >= 2 samples per sub-batch for train-mode BN
        if splits <= 1:
            return self.encoder_k(im_k)
        idx_shuffle = torch.randperm(n, device=im_k.device)
        k = torch.cat([self.encoder_k(chunk) for chunk in im_k[idx_shuffle].chunk(splits)])
        return k[torch.argsort(idx_shuffle)]

    @torch.no_grad()
    def compute_keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Normalised keys of this rank's ``im_k`` (shuffle-BN applied if enabled)."""
        if self.shuffle_bn and dist_world_size() > 1:
            im_k, idx_unshuffle = self._batch_shuffle_ddp(im_k)
            k = self._batch_unshuffle_ddp(self.encoder_k(im_k), idx_unshuffle)
        elif self.shuffle_bn:
            k = self._split_bn_keys(im_k)
        else:
            k = self.encoder_k(im_k)
        return F.normalize(k.float(), dim=1)

    def forward(self, im_q: torch.Tensor, im_k: torch.Tensor, update_key_encoder: bool = True,
                enqueue: bool = True):
        """One MoCo step: returns ``(loss, logits, labels)`` and updates ``encoder_k``/queue.

        Gradient accumulation calls this once per micro-batch: ``update_key_encoder`` only
        on the first (one momentum update per optimiser step) and ``enqueue`` only on the
        last, which enqueues the held-back keys of the earlier micro-batches with its own;
        every micro-batch then sees the queue that one large batch would have seen.
        """
        q = F.normalize(self.encoder_q(im_q).float(), dim=1)
        with torch.no_grad():
            if update_key_encoder:
                self.momentum_update()
            k = self.compute_keys(im_k)
        with torch.autocast(q.device.type, enabled=False):  # logits / T in fp32
            l_pos = (q * k).sum(dim=1, keepdim=True)
            l_neg = q @ self.queue.clone().detach()
            logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature
            labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
            loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            held = self._held_keys
            held.append(concat_all_gather(k) if dist_world_size() > 1 else k)
            self._held_keys = [] if enqueue else held
            if enqueue:
                self._enqueue(torch.cat(held) if len(held) > 1 else held[0])
        return loss, logits, labels

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, queue_size={self.queue_size}, momentum={self.momentum}, "
                f"temperature={self.temperature}, mlp={self.mlp}, shuffle_bn={self.shuffle_bn}, "
                f"bn_splits={self.bn_splits}")
