"""The one method table: the paper's methods, the sequential-transfer names, and the
reference rows every results table carries.

A method says how a target-stage checkpoint is made: the variant (what trains), the
upstream stage it starts from, and whether a step budget applies. Plain configs name a
variant and an init per stage; :func:`stage_method` gives the method tag such a stage
carries (what trains *and* where it starts: ``full`` from random init is Target, from a
base model HPT, from a source model B+S+T).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

from ..config import STAGE_NAMES
from ..config.loader import suggest
from ..config.schema import SSL_METHODS
from ..errors import ConfigError


@dataclass(frozen=True)
class Method:
    """How a method's target-stage checkpoint is made (``variant`` None: a reference,
    nothing is trained)."""

    name: str
    variant: Optional[str]
    starts_from: Optional[str] = None  # upstream stage: base | source | None (scratch)
    uses_steps: bool = True  # False: no step budget (BN statistics only, references)
    description: str = ""
    continues: bool = False  # the step budget continues ``starts_from`` on its own data
    train_head: bool = True  # variant bn: the projection head trains too (official HPT)

    @property
    def is_reference(self) -> bool:
        return self.variant is None


_TABLE = (
    Method("Base", "bn-stats", "base", False,
           "base model, BN statistics re-estimated on target"),
    Method("Target", "scratch", None, True, "MoCo-v2 from scratch on the target"),
    Method("HPT", "full", "base", True, "base -> target, all layers trained"),
    Method("HPT-BN", "bn", "base", True,
           "base -> target, normalisation (BatchNorm, LayerNorm, GroupNorm) layers and the "
           "projection head trained (official HPT)"),
    Method("HPT-BN-frozen-head", "bn", "base", True,
           "base -> target, only the backbone's normalisation layers trained",
           train_head=False),
    Method("B+S", "bn-stats", "source", False,
           "base -> source, BN statistics re-estimated on target"),
    Method("B+S+T", "full", "source", True, "base -> source -> target"),
    Method("Base+N", "bn-stats", "base", True,
           "compute-matched control: base continued N steps on base data, then BN "
           "statistics re-estimated on target", continues=True),
    # after the paper's rows: every earlier method keeps its plot colour
    Method("HPT-LB", "last-blocks", "base", True,
           "base -> target, the last blocks (stages.<s>.blocks), the normalisation layers "
           "and the projection head trained"),
    Method("HPT-LoRA", "lora", "base", True,
           "base -> target, as HPT-LB plus LoRA adapters on the other blocks (ExPLoRA)"),
    Method("raw-pixels", None, None, False, "no backbone"),
    Method("random-init", None, None, False, "untrained backbone"),
)
METHODS: Dict[str, Method] = {m.name: m for m in _TABLE}
ALIASES = {"B": "Base", "B+T": "HPT"}  # the paper's sequential-transfer names
REFERENCES = tuple(m.name for m in _TABLE if m.is_reference)
REFERENCE_LABELS = {"raw-pixels": "raw pixels (reference)",
                    "random-init": "random init (reference)"}
PAPER_METHODS = ("Base", "Target", "HPT", "HPT-BN")
# The claims a report judges (experiments/claims.py): the paper's 1-5 and our control C;
# an experiment file's `caveats` name them.
CLAIM_NUMBERS = ("1", "2", "3", "4", "5", "C")
TRANSFER = (("B", "Base"), ("B+S", "B+S"), ("B+T", "HPT"), ("B+S+T", "B+S+T"))
TRAINS_ALL = ("full", "scratch")  # the same training: every parameter (variants.py)
TARGET_STAGE = STAGE_NAMES[-1]
UPSTREAM_METHOD = "{ssl} {stage}"  # the method tag of a stage before the target
SSL_LABELS = {"moco-v2": "MoCo-v2", "dino": "DINO"}  # config ssl: -> how tables name it
DEFAULT_SSL = SSL_METHODS[0]  # moco-v2: the method of all recorded before ssl was
EXTERNAL_METHOD = "external ({layout})"  # a checkpoint this toolkit did not write


def method(name: str) -> Method:
    """The method ``name`` (aliases allowed); unknown names fail with a suggestion."""
    name = ALIASES.get(str(name), str(name))
    if name not in METHODS:
        valid = list(METHODS) + list(ALIASES)
        raise ConfigError(f"unknown method '{name}'{suggest(name, valid)}; methods: "
                          f"{', '.join(valid)}")
    return METHODS[name]


def stage_method(stage: str, variant: str, start: Optional[str],
                 train_head: bool = True, ssl: Optional[str] = None) -> str:
    """The method tag of a plain config's stage. A target stage's is the table's row of
    what trains (``variant``; ``full`` and ``scratch`` train the same) and where it starts:
    ``start`` None is a random init, ``source`` a source model; any other pretrained
    checkpoint counts as a base model. Stages before the target are the upstream models
    (``MoCo-v2 base``, ``DINO base``: ``ssl``); a combination without a row keeps its
    variant's base-model row."""
    if stage != TARGET_STAGE:
        return upstream_method(stage, ssl)
    trains = "full" if variant in TRAINS_ALL else variant
    start = start if start in (None, "source") else "base"
    rows = [m for m in _TABLE if not m.is_reference and not m.continues
            and ("full" if m.variant in TRAINS_ALL else m.variant) == trains
            and (m.train_head == train_head or trains != "bn")]
    found = [m for m in rows if m.starts_from == start] or \
        [m for m in rows if m.starts_from == "base"]
    return found[0].name


def filed_steps(name: str, variant: str, steps: int) -> int:
    """The step budget tables file a stage's checkpoint under: its ``steps`` when its
    method has a step budget, 0 when it only re-estimates BN statistics."""
    known = METHODS.get(name)
    return steps if (known.uses_steps if known else variant != "bn-stats") else 0


def upstream_method(stage: str, ssl: Optional[str] = None) -> str:
    """The method tag of an upstream (base, source) stage: ``MoCo-v2 <stage>`` (``ssl``
    None: MoCo-v2), ``DINO <stage>``."""
    return UPSTREAM_METHOD.format(ssl=ssl_label(ssl), stage=stage)


def ssl_label(ssl: Optional[str]) -> str:
    """How tables and tags name an ssl method (``None``: MoCo-v2, the default)."""
    return SSL_LABELS.get(ssl or DEFAULT_SSL, str(ssl))


def external_method(layout: str) -> str:
    """The method tag of an evaluated checkpoint of another toolkit (its file layout:
    moco, openselfsup, torchvision)."""
    return EXTERNAL_METHOD.format(layout=layout)


def display_name(name: str) -> str:
    """A method's name in tables: references get their reference label."""
    return REFERENCE_LABELS.get(name, name)
