"""Self-supervised (ssl) methods behind one interface (:class:`SslMethod`), one module
each, and the one table keyed by the config's ``ssl:`` (names: ``config.SSL_METHODS``).

Add a method: its module here (a subclass of :class:`SslMethod`), its row in
:data:`METHODS`, its name in ``config.schema.SSL_METHODS`` (and its hyper-parameter
section there); see docs/architecture.md.
"""
from __future__ import annotations

from typing import Any, Dict, Type

from ..config.schema import SSL_METHODS
from ..errors import ConfigError
from .base import SslMethod
from .dino import Dino, DinoHead
from .moco import MoCo, cap_queue_size, projection_head

METHODS: Dict[str, Type[SslMethod]] = {MoCo.name: MoCo, Dino.name: Dino}
assert tuple(METHODS) == SSL_METHODS, "config.schema.SSL_METHODS names the rows of METHODS"


def method_class(name: str) -> Type[SslMethod]:
    """The class of the ssl method ``name`` (``moco-v2``, ...)."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"ssl: '{name}' is not one of {', '.join(METHODS)}") from None


def load_initial_weights(model: SslMethod, path: str, strict_backbone: bool = True) -> dict:
    """Initialise ``model`` from a checkpoint file (:meth:`SslMethod.load_initial`)."""
    return model.load_initial(path, strict_backbone)


def build_method(cfg: Any, name: str, *, num_images: int, global_batch: int) -> SslMethod:
    """The ssl method ``name`` for a stage of ``cfg`` (``num_images`` training images,
    ``global_batch`` images per step)."""
    return method_class(name).for_stage(cfg, num_images=num_images, global_batch=global_batch)


__all__ = ["METHODS", "Dino", "DinoHead", "MoCo", "SslMethod", "build_method", "cap_queue_size",
           "load_initial_weights", "method_class", "projection_head"]
