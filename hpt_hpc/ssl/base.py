"""The interface every self-supervised (ssl) method implements: what the stage engine,
the speed switches, variants, checkpoint I/O, export, evaluation, progress and tracking
may ask of a method. One module per method under :mod:`hpt_hpc.ssl`, one table
(:data:`hpt_hpc.ssl.METHODS`) keyed by the config's ``ssl:``.

A method is an ``nn.Module`` (its ``state_dict`` is the checkpoint's ``model``) holding:

* ``online`` encoder(s) trained by gradient; :meth:`SslMethod.online_encoder` is the one
  that is probed, exported and embedded (its backbone), with its head as ``fc``
  (:mod:`hpt_hpc.models.backbones`);
* ``targets``: encoders following online ones by momentum/EMA (never optimised):
  :meth:`SslMethod.ema_pairs` and the schedule :meth:`SslMethod.ema_momentum`.

The engine calls the method (through DDP when distributed) as
``out = net(*views, **method.micro_batch(first, last))`` for each micro-batch of a step,
takes the loss from :meth:`SslMethod.loss_of`, calls :meth:`SslMethod.before_step`, steps
the optimiser, then calls :meth:`SslMethod.after_step`; :meth:`SslMethod.metrics_of` names
what is logged and :meth:`SslMethod.failure_of` may stop the stage on it.
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Tuple

import torch
from torch import nn

from ..config.schema import LoraConfig
from ..models import backbone_state_dict, configure_variant
from ..models.lora import adapted_layers, add_adapters, has_adapters, is_adapter_key
from ..models.loading import (load_backbone_into, load_head_into, load_target_into,
                              read_weights)


class SslMethod(nn.Module):
    """Base class of the ssl methods (see the module docstring)."""

    name: ClassVar[str] = ""  # the config's ``ssl:`` value
    backbone_key: ClassVar[str] = ""  # state-dict prefix of the online encoder
    target_key: ClassVar[str] = ""  # state-dict prefix of the (first) target encoder
    head_layouts: ClassVar[Tuple[str, ...]] = ()  # foreign layouts holding this head
    local_crops: ClassVar[bool] = False  # takes local views after the two global ones

    @classmethod
    def from_config(cls, cfg: Any, *, num_images: int, global_batch: int) -> "SslMethod":
        """The method for an ``ExperimentConfig`` whose stage lists ``num_images``
        training images and steps with ``global_batch`` images."""
        raise NotImplementedError

    def online_encoder(self) -> nn.Module:
        """The encoder whose backbone is the stage's result (head as ``fc``)."""
        raise NotImplementedError

    def ema_pairs(self) -> List[Tuple[nn.Module, nn.Module]]:
        """``(target, online)`` pairs updated by momentum; targets are never optimised."""
        return []

    def ema_momentum(self, step: int, total: int) -> float:
        """The momentum of the target update at ``step`` of ``total``."""
        return 0.0

    def compiled_modules(self) -> List[nn.Module]:
        """Modules ``compute.compile`` compiles in place (state-dict keys unchanged)."""
        return [self.online_encoder()] + [target for target, _ in self.ema_pairs()]

    def micro_batch(self, first: bool, last: bool) -> Dict[str, Any]:
        """Keyword arguments of ``forward`` for one micro-batch of a step (gradient
        accumulation: ``first``/``last`` of the step's micro-batches)."""
        return {}

    def loss_of(self, out: Any) -> torch.Tensor:
        """The loss of one ``forward`` result."""
        raise NotImplementedError

    def metrics_of(self, out: Any) -> Dict[str, float]:
        """Named metrics of one ``forward`` result (read when a step is logged)."""
        return {}

    def failure_of(self, metrics: Dict[str, float]) -> str:
        """Why the logged ``metrics`` show the training failed (e.g. collapsed) and what to
        change, or "" when healthy; the engine stops the stage with this line."""
        return ""

    def before_step(self, step: int, total: int) -> None:
        """Called after the backward of step ``step`` (0-based), before gradient clipping
        and the optimiser step (e.g. dropping a frozen layer's gradient)."""

    def after_step(self, step: int, total: int) -> None:
        """Called after every optimiser step (e.g. an EMA update that follows it)."""

    def facts(self) -> Dict[str, Any]:
        """Numbers a stage reports about its method (e.g. ``queue_size``)."""
        return {}

    # -- shared behaviour ----------------------------------------------------------------
    def trainable_parameters(self, variant: str, train_head: bool = True, blocks: int = 1,
                             lora: Any = None) -> List[nn.Parameter]:
        """Set ``requires_grad`` for ``variant`` (targets always frozen) and return the
        parameters to optimise (:func:`~hpt_hpc.models.variants.configure_variant`);
        variant ``lora`` first adds the adapters (:meth:`add_adapters`; ``lora``: a
        ``LoraConfig``, None: its defaults). Call before wrapping in DDP, before loading a
        resumed state (it holds the adapters) and after loading initial weights (plain)."""
        if variant == "lora" and not has_adapters(self.online_encoder()):
            self.add_adapters(blocks, lora if lora is not None else LoraConfig())
        for p in self.parameters():
            p.requires_grad = False
        return configure_variant(self.online_encoder(), variant, train_head, blocks)

    def add_adapters(self, blocks: int, lora: Any) -> List[str]:
        """LoRA adapters (:mod:`hpt_hpc.models.lora`) on the online encoder's blocks but
        the last ``blocks``, and the same on every target, whose adapters start as copies
        of its online encoder's (targets keep following by EMA). Returns the adapted
        layers' names."""
        online = self.online_encoder()
        names = adapted_layers(online, blocks, lora.targets)
        add_adapters(online, names, lora.rank, lora.alpha)
        for target, source in self.ema_pairs():
            if source is online:
                add_adapters(target, names, lora.rank, lora.alpha)
                adapters = dict(source.named_parameters())
                with torch.no_grad():
                    for name, param in target.named_parameters():
                        if is_adapter_key(name):
                            param.copy_(adapters[name])
        return names

    def sync_targets(self) -> None:
        """Every target becomes an exact copy of its online encoder (weights and buffers)."""
        for target, online in self.ema_pairs():
            target.load_state_dict(online.state_dict())

    @torch.no_grad()
    def ema_update(self, momentum: float) -> None:
        """``target <- m * target + (1 - m) * online`` over parameters (not buffers)."""
        for target, online in self.ema_pairs():
            params_t = [p.detach() for p in target.parameters()]
            params_o = [p.detach() for p in online.parameters()]
            torch._foreach_lerp_(params_t, params_o, 1.0 - momentum)

    def backbone_state(self) -> Dict[str, torch.Tensor]:
        """The online backbone's weights with its library's keys (an export's content)."""
        return backbone_state_dict(self.online_encoder())

    def checkpoint_keys(self) -> Dict[str, str]:
        """What a checkpoint records so that any reader finds the encoders in ``model``."""
        return {"ssl": self.name, "backbone_key": self.backbone_key,
                "target_key": self.target_key,
                "feature_dim": int(self.online_encoder().feature_dim)}

    def load_initial(self, path: str, strict: bool = True,
                     source: str = "") -> Dict[str, Any]:
        """Initialise from a checkpoint file of any accepted layout
        (:mod:`hpt_hpc.models.loading`): the backbone always (every key must fit unless
        ``strict`` is False); the head and the target too when the file was written by
        this method (and they fit); otherwise heads stay fresh and targets become copies
        of their online encoders.

        Report keys: ``layout``, ``ssl`` (the writing method, toolkit files), ``loaded_keys``
        (tensors loaded into the online encoder), ``backbone_loaded`` (of them, the
        backbone's), ``expected_keys`` (the backbone's), ``head_loaded``,
        ``targets_loaded``, ``ignored_keys``, ``missing_keys``, ``unexpected_keys``,
        ``shape_mismatches``, ``dropped_keys`` (a library classifier's), ``adapted`` (weights
        of another file than the toolkit's, adapted to the input size or channels as timm
        adapts pretrained weights). ``source`` names the file in messages (default: its
        path).
        """
        weights = read_weights(path)
        online = self.online_encoder()
        report = load_backbone_into(online, weights.backbone,
                                    f"{source or 'checkpoint ' + str(path)} "
                                    f"({weights.layout} layout)", strict,
                                    adapt=weights.layout != "hpt-hpc")
        own = weights.layout == "hpt-hpc" and weights.ssl == self.name
        head = (own or weights.layout in self.head_layouts) and load_head_into(online,
                                                                                weights.head)
        pairs = self.ema_pairs()
        targets = own and head and len(pairs) == 1 and load_target_into(pairs[0][0],
                                                                          weights.target)
        if not targets:
            self.sync_targets()
        report.update({"layout": weights.layout, "ssl": weights.ssl,
                       "backbone_loaded": report["loaded_keys"],
                       "loaded_keys": report["loaded_keys"] + (len(weights.head) if head else 0),
                       "head_loaded": bool(head), "targets_loaded": bool(targets),
                       "ignored_keys": weights.ignored})
        return report
