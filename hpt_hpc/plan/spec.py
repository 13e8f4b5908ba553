"""A parsed experiment file (:mod:`.experiment` reads it): its studies and the names,
folders and checkpoints of its shared upstream stages. Plain data: the units and plans
built from it (:mod:`.units`, :mod:`.unit_plans`) are typed by it."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

from ..config import ExperimentConfig, OutputLayout, StageLayout, config_from_dict
from .methods import DEFAULT_SSL

DEFAULT_STEPS = "default"


@dataclass
class Study:
    """One grid; every axis a list (``steps`` may be a per-method mapping); ``evaluation``:
    the study's own ``probe.*``/``finetune.*`` overrides for its evaluations."""

    name: str
    axes: Dict[str, Any]
    evaluation: List[str] = field(default_factory=list)

    def steps_for(self, method: str, fallback: int) -> List[int]:
        """The step budgets of ``method`` in this study."""
        return self._per_method("steps", method, [fallback])

    def probes_for(self, method: str) -> List[int]:
        """The steps at which ``method``'s runs are probed along the way (``probe_at``:
        a list for every method, or a mapping like ``steps``)."""
        return self._per_method("probe_at", method, [])

    def _per_method(self, axis: str, method: str, absent: List[int]) -> List[int]:
        """A steps-like axis for ``method``: the list, or the mapping's entry for it (else
        its ``default``); ``absent`` where neither gives one."""
        values = self.axes.get(axis, absent)
        if isinstance(values, dict):
            return list(values.get(method, values.get(DEFAULT_STEPS, absent)))
        return list(values)


@dataclass
class ExperimentSpec:
    """A parsed experiment file; ``config`` is the base config as a raw dict (absolute
    paths), ``output_dir`` absolute."""

    name: str
    path: Path
    config: Dict[str, Any]
    output_dir: Path
    upstream: Dict[str, Dict[str, Any]]
    methods: Dict[str, Dict[str, Any]]
    studies: List[Study]
    prepare: Dict[str, str] = field(default_factory=dict)
    references: bool = True
    ssl: str = DEFAULT_SSL  # the ssl method every stage of the sweep trains with
    caveats: Dict[str, str] = field(default_factory=dict)  # claim number -> what it cannot show

    @property
    def ssl_suffix(self) -> str:
        """What names the sweep's ssl method in unit ids, upstream folders and registry
        aliases: nothing for MoCo-v2 (the ids of every earlier sweep), ``-dino`` for DINO,
        so a unit never finds another method's checkpoint or result."""
        return "" if self.ssl == DEFAULT_SSL else f"-{self.ssl}"

    def upstream_suffix(self, base_seed: int = 0) -> str:
        """What names an upstream stage's ssl method and base seed: ``-b<n>`` for base
        seed n > 0 (base seed 0: the folders, ids and aliases of every earlier sweep)."""
        return self.ssl_suffix + (f"-b{base_seed}" if base_seed else "")

    @property
    def base_seeds(self) -> List[int]:
        """The base seeds of all studies (``[0]`` when no study varies them)."""
        return sorted({int(b) for study in self.studies
                       for b in study.axes.get("base_seed", [0])})

    def upstream_id(self, stage: str, base_seed: int = 0) -> str:
        """The unit id of a shared stage: ``upstream-<stage><upstream_suffix>``."""
        return f"upstream-{stage}{self.upstream_suffix(base_seed)}"

    def upstream_layout(self, stage: str, base_seed: int = 0) -> StageLayout:
        """Where the sweep's shared ``stage`` (base, source) is trained."""
        return self.layout.upstream(stage, self.upstream_suffix(base_seed))

    @property
    def layout(self) -> OutputLayout:
        return OutputLayout(self.output_dir)

    @property
    def experiment(self) -> str:
        """The MLflow experiment of the sweep's runs."""
        return self.config["tracking"]["experiment"]

    def base_config(self) -> ExperimentConfig:
        return config_from_dict(self.config)

    def upstream_checkpoint(self, stage: str, base_seed: int = 0) -> Path:
        """The final checkpoint of an upstream stage (a given file, or the trained one)."""
        given = self.upstream.get(stage, {}).get("checkpoint")
        return Path(given) if given else self.upstream_layout(stage, base_seed).final
