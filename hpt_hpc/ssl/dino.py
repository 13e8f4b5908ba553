"""DINO (Caron et al. 2021, self-distillation with no labels): the ssl method ``dino``
(:class:`~hpt_hpc.ssl.base.SslMethod`), written from the paper's algorithm.

``student``/``teacher`` are encoders of one backbone (:mod:`hpt_hpc.models.backbones`)
whose ``fc`` is the DINO head (:class:`DinoHead`). The student is the online encoder
(probed, exported); the teacher follows it by EMA after every optimiser step with a
momentum raised from ``momentum_teacher`` to 1 by a cosine schedule (parameters only; its
BatchNorm statistics are its own). ``forward(*views)`` takes the two global views first,
then any local views (:attr:`local_crops`); views of one size run through the backbone
together. The teacher sees the global views only; its outputs are centred (the centre
follows the all-rank mean of the teacher outputs with ``center_momentum``, once per
optimiser step) and sharpened by the teacher temperature (linear warm-up over
``warmup_teacher_temp_steps``); the loss is the cross-entropy between every teacher view
and every student view but the same one, averaged over those pairs. The head's last
layer drops its gradient for the first ``freeze_last_layer_steps`` steps. Logits and the
loss are computed in fp32.

Differences from the official code: schedules count steps, not epochs. Its weight decay
(a cosine from 0.04 to 0.4, none on biases and norms) is the optimiser's:
``optim.weight_decay_end`` and ``optim.decay_norms_and_biases: false``.
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..models.backbones import build_encoder, is_timm
from .base import SslMethod
from .collectives import dist_world_size


class WeightNormLinear(nn.Module):
    """``x @ (g * v / |v|)^T`` without bias, row-wise norms (``weight_norm`` of a Linear)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.weight_v
        return F.linear(x, self.weight_g * v / v.norm(dim=1, keepdim=True))


class DinoHead(nn.Module):
    """MLP (Linear-GELU-Linear-GELU-Linear to ``bottleneck_dim``), L2 normalisation, and a
    weight-normalised Linear to ``out_dim`` prototypes (``last_layer``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048,
                 bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, bottleneck_dim))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


def _size_groups(views: Sequence[torch.Tensor]) -> List[torch.Tensor]:
    """Consecutive views of one shape concatenated (one backbone pass each)."""
    groups: List[List[torch.Tensor]] = []
    for view in views:
        if groups and groups[-1][0].shape == view.shape:
            groups[-1].append(view)
        else:
            groups.append([view])
    return [torch.cat(g) if len(g) > 1 else g[0] for g in groups]


class Dino(SslMethod):
    """DINO with a student, an EMA teacher and a centred, sharpened teacher output.

    ``forward(*views)`` returns a dict: ``loss`` (with gradient) and detached statistics
    (:meth:`metrics_of`)."""

    name = "dino"
    backbone_key, target_key = "student.", "teacher."
    local_crops = True

    def __init__(self, arch: str = "resnet18", width: float = 1.0, small_stem: bool = False,
                 in_channels: int = 3, stem_stride: int = 1, image_size: int = 224,
                 timm_kwargs: Optional[Dict[str, Any]] = None, out_dim: int = 65536,
                 hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, freeze_last_layer_steps: int = 0,
                 teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_teacher_temp_steps: int = 0, student_temp: float = 0.1,
                 center_momentum: float = 0.9, momentum_teacher: float = 0.996,
                 collapse_min_feature_std: float = 0.0, collapse_min_kl: float = 0.0) -> None:
        super().__init__()
        self.student = build_encoder(arch, width, small_stem, in_channels, stem_stride,
                                     image_size, timm_kwargs)
        self.student.fc = DinoHead(self.student.feature_dim, out_dim, hidden_dim,
                                   bottleneck_dim)
        self.teacher = copy.deepcopy(self.student)
        for p in self.teacher.parameters():
            p.requires_grad = False
        self.out_dim, self.norm_last_layer = out_dim, norm_last_layer
        self.freeze_last_layer_steps = freeze_last_layer_steps
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.warmup_teacher_temp_steps, self.student_temp = warmup_teacher_temp_steps, student_temp
        self.center_momentum, self.momentum_teacher = center_momentum, momentum_teacher
        self.collapse_min_feature_std, self.collapse_min_kl = (collapse_min_feature_std,
                                                               collapse_min_kl)
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self._held: List[Tuple[torch.Tensor, int]] = []  # teacher sums of earlier micro-batches

    @classmethod
    def for_stage(cls, cfg: Any, *, num_images: int, global_batch: int) -> "Dino":
        """The stage's DINO from ``cfg.model``, ``cfg.dino`` and ``data.image_size``; a timm
        model that takes ``dynamic_img_size`` (ViTs) gets it when local views are on."""
        m = cfg.model
        kwargs = dict(m.timm_kwargs or {})
        local = getattr(getattr(cfg.augment, "local_crops", None), "number", 0)
        if is_timm(m.arch) and local and "dynamic_img_size" not in kwargs:
            try:
                return cls._build(cfg, {**kwargs, "dynamic_img_size": True})
            except TypeError as exc:
                if "dynamic_img_size" not in str(exc):
                    raise
        return cls._build(cfg, kwargs)

    @classmethod
    def _build(cls, cfg: Any, timm_kwargs: Dict[str, Any]) -> "Dino":
        m, d = cfg.model, cfg.dino
        return cls(arch=m.arch, width=m.width, small_stem=m.small_stem,
                   in_channels=m.in_channels, stem_stride=m.stem_stride,
                   image_size=cfg.data.image_size, timm_kwargs=timm_kwargs or None,
                   out_dim=d.out_dim, hidden_dim=d.hidden_dim,
                   bottleneck_dim=d.bottleneck_dim, norm_last_layer=d.norm_last_layer,
                   freeze_last_layer_steps=d.freeze_last_layer_steps,
                   teacher_temp=d.teacher_temp, warmup_teacher_temp=d.warmup_teacher_temp,
                   warmup_teacher_temp_steps=d.warmup_teacher_temp_steps,
                   student_temp=d.student_temp, center_momentum=d.center_momentum,
                   momentum_teacher=d.momentum_teacher,
                   collapse_min_feature_std=d.collapse_min_feature_std,
                   collapse_min_kl=d.collapse_min_kl)

    # -- the SslMethod interface ---------------------------------------------------------
    def online_encoder(self) -> nn.Module:
        return self.student

    def ema_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        return [(self.teacher, self.student)]

    def ema_momentum(self, step: int, total: int) -> float:
        """Cosine from ``momentum_teacher`` (step 0) towards 1 (step ``total``)."""
        return 1.0 - (1.0 - self.momentum_teacher) * (
            math.cos(math.pi * step / max(1, total)) + 1.0) / 2.0

    def micro_batch(self, first: bool, last: bool) -> Dict[str, Any]:
        return {"update_center": last}

    def trainable_parameters(self, variant: str, train_head: bool = True, blocks: int = 1,
                             lora: Any = None) -> List[nn.Parameter]:
        """:meth:`SslMethod.trainable_parameters`; with ``norm_last_layer`` the last
        layer's ``weight_g`` stays 1 (frozen)."""
        params = super().trainable_parameters(variant, train_head, blocks, lora)
        if self.norm_last_layer:
            g = self.student.fc.last_layer.weight_g
            g.requires_grad = False
            params = [p for p in params if p is not g]
        return params

    def loss_of(self, out: Any) -> torch.Tensor:
        return out["loss"]

    def metrics_of(self, out: Any) -> Dict[str, float]:
        return {k: float(v) for k, v in out.items() if k != "loss"}

    def failure_of(self, metrics: Dict[str, float]) -> str:
        std, kl = metrics.get("feature_std"), metrics.get("kl")
        advice = (f"(teacher entropy {metrics.get('teacher_entropy', float('nan')):.3g}); "
                  f"keep centring (dino.center_momentum below 1) and sharpening "
                  f"(dino.teacher_temp below dino.student_temp), or lower the learning rate")
        if std is not None and std < self.collapse_min_feature_std:
            return (f"DINO collapsed: the student's feature std {std:.3g} is below "
                    f"dino.collapse_min_feature_std {self.collapse_min_feature_std:g} {advice}")
        if kl is not None and kl < self.collapse_min_kl:
            return (f"DINO collapsed: KL(teacher || student) {kl:.3g} is below "
                    f"dino.collapse_min_kl {self.collapse_min_kl:g} {advice}")
        return ""

    def before_step(self, step: int, total: int) -> None:
        """Drop the last layer's gradient while it is frozen (step < freeze steps)."""
        if step < self.freeze_last_layer_steps:
            for p in self.student.fc.last_layer.parameters():
                p.grad = None

    def after_step(self, step: int, total: int) -> None:
        """The teacher's EMA with the momentum of the step just done (``step - 1``)."""
        self.ema_update(self.ema_momentum(step - 1, total))
        self.steps_done.fill_(step)

    def facts(self) -> Dict[str, Any]:
        return {"out_dim": self.out_dim}

    def load_initial(self, path: str, strict: bool = True,
                     source: str = "") -> Dict[str, Any]:
        """:meth:`SslMethod.load_initial`; the centre starts at 0 and the schedules at
        step 0 in every new stage. Report key also ``teacher``."""
        report = super().load_initial(path, strict, source)
        report["teacher"] = ("checkpoint" if report["targets_loaded"]
                             else "copied from the student")
        return report

    # -- the algorithm -------------------------------------------------------------------
    def teacher_temperature(self) -> torch.Tensor:
        """Linear from ``warmup_teacher_temp`` to ``teacher_temp`` over the warm-up steps
        (a device tensor: no host sync)."""
        progress = self.steps_done.float() / max(1, self.warmup_teacher_temp_steps)
        if self.warmup_teacher_temp_steps == 0:
            progress = torch.ones_like(progress)
        return self.warmup_teacher_temp + (self.teacher_temp - self.warmup_teacher_temp) * \
            progress.clamp(max=1.0)

    def forward(self, *views: torch.Tensor, update_center: bool = True) -> Dict[str, torch.Tensor]:
        """One DINO step on ``views`` (2 global, then local): the loss and statistics;
        ``update_center`` on the step's last micro-batch (gradient accumulation: the
        centre moves once per step, by the mean over all its micro-batches)."""
        if len(views) < 2:
            raise ValueError(f"DINO needs at least 2 views, got {len(views)}")
        with torch.no_grad():
            teacher_out = torch.cat([self.teacher(x) for x in _size_groups(views[:2])]).float()
        feats = [self.student.forward_features(x) for x in _size_groups(views)]
        student_out = torch.cat([self.student.fc(f) for f in feats]).float()
        with torch.autocast(student_out.device.type, enabled=False):
            temp = self.teacher_temperature()
            teacher_p = F.softmax((teacher_out - self.center) / temp, dim=-1).chunk(2)
            student_logp = F.log_softmax(student_out / self.student_temp, dim=-1) \
                .chunk(len(views))
            terms = [torch.sum(-t * student_logp[v], dim=-1).mean()
                     for i, t in enumerate(teacher_p) for v in range(len(views)) if v != i]
            loss = sum(terms) / len(terms)
        with torch.no_grad():
            self._held.append((teacher_out.sum(dim=0, keepdim=True), teacher_out.shape[0]))
            if update_center:
                self._update_center()
            entropy = torch.stack([-(t * torch.log(t.clamp_min(1e-12))).sum(-1).mean()
                                   for t in teacher_p]).mean()
            global_feats = F.normalize(feats[0].float(), dim=1)
            stats = {"teacher_entropy": entropy, "kl": loss.detach() - entropy,
                     "feature_std": global_feats.std(dim=0).mean(), "teacher_temp": temp}
        return {"loss": loss, **stats}

    @torch.no_grad()
    def _update_center(self) -> None:
        """``center <- m * center + (1 - m) * mean`` of the held teacher outputs over all
        ranks (all-reduced when distributed)."""
        total = torch.stack([s for s, _ in self._held]).sum(dim=0)
        count = sum(n for _, n in self._held) * dist_world_size()
        self._held = []
        if dist_world_size() > 1:
            dist.all_reduce(total)
        self.center.mul_(self.center_momentum).add_(total / count,
                                                    alpha=1 - self.center_momentum)

    def extra_repr(self) -> str:
        return (f"out_dim={self.out_dim}, teacher_temp={self.teacher_temp}, "
                f"student_temp={self.student_temp}, center_momentum={self.center_momentum}, "
                f"momentum_teacher={self.momentum_teacher}")
