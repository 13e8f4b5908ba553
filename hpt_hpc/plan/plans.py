"""The plan objects jobs receive: small picklable dataclasses, resolved once by the
planner (:mod:`hpt_hpc.plan.planner`, :mod:`hpt_hpc.plan.units`) and never re-derived.

* :class:`StagePlan` - one MoCo-v2 stage: its resolved config, variant, dataset, learning
  rate after linear scaling, global and per-rank batch, :class:`InitRef`,
  :class:`StageLayout`, tags and where it logs (:class:`TrackingTarget`);
* :class:`EvalPlan` - one evaluation (linear probe or fine-tune) of one checkpoint or a
  reference (raw pixels, random init);
* :class:`Phase` - plans that run together (one SLURM array) after other phases.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from ..config import ExperimentConfig, InitRef, StageLayout, config_to_dict
from ..config.protocols import PROTOCOLS as PROTOCOL_TABLE
from ..config.refs import INIT_TAG
from .methods import filed_steps

DEPENDENCIES = ("afterok", "afterany")
PROTOCOLS = tuple(PROTOCOL_TABLE)  # evaluation protocols (config/protocols.py)


@dataclass(frozen=True)
class TrackingTarget:
    """Where a job logs: the store, experiment, registered model and pipeline (the
    registry alias of a stage is ``<pipeline>-<label>``) and the parent run."""

    uri: str
    experiment: str
    model_name: str
    pipeline: str
    parent_run_id: Optional[str] = None
    flush_seconds: float = 10.0
    system_metrics: bool = True

    def tags(self) -> Dict[str, str]:
        """The tags of every run logged here: its pipeline."""
        return {"hpt.pipeline": self.pipeline}


@dataclass
class StagePlan:
    """One stage to run. ``lr`` is the rate after linear scaling; ``rank_batch_size`` the
    per-rank share of the global ``batch_size`` over ``world_size`` ranks."""

    config: ExperimentConfig
    stage: str
    label: str
    method: str
    init: InitRef
    layout: StageLayout
    iterations: int
    lr: float
    batch_size: int
    rank_batch_size: int
    world_size: int = 1
    tracking: Optional[TrackingTarget] = None
    tags: Dict[str, str] = field(default_factory=dict)
    budget: Optional[int] = None  # a sweep unit's step budget (None: from the method)
    kind = "stage"

    @property
    def variant(self) -> str:
        return self.config.stages[self.stage].variant

    @property
    def dataset(self) -> str:
        return self.config.stages[self.stage].dataset

    @property
    def ssl(self) -> str:
        """The stage's self-supervised method (``stages.<stage>.ssl``, else ``ssl``)."""
        return self.config.stages[self.stage].ssl or self.config.ssl

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def target_steps(self) -> int:
        """The step budget tables file the stage's checkpoint under: a sweep unit's
        ``budget``, else :func:`~hpt_hpc.plan.methods.filed_steps` of its iterations."""
        if self.budget is not None:
            return self.budget
        return filed_steps(self.method, self.variant, self.iterations)

    def run_tags(self) -> Dict[str, str]:
        """The tags of the stage's run (lineage tags are added when the init resolves)."""
        tags = {"hpt.stage": self.stage, "hpt.method": self.method,
                "hpt.dataset": self.dataset, "hpt.variant": self.variant,
                INIT_TAG: str(self.init), "hpt.ssl": self.ssl}
        if self.tracking:
            tags.update(self.tracking.tags())
        return {**tags, **self.tags}

    def describe(self) -> str:
        cfg = self.config
        ds = cfg.datasets[self.dataset]
        amount = f", first {ds.max_images} images" if ds.max_images else ""
        return (f"{self.label}: {self.method} ({self.variant}) on {self.dataset} "
                f"[{ds.path}{amount}], init {self.init}, ssl {self.ssl}, {self.iterations} "
                f"steps, lr {self.lr:g}, batch {self.batch_size} ({self.rank_batch_size}/rank x "
                f"{self.world_size}), seed {self.seed} -> {self.layout.final}")


@dataclass
class EvalPlan:
    """One evaluation: ``protocol`` (linear | finetune) of ``checkpoint`` on ``dataset``.
    ``method`` ``raw-pixels`` probes pixels, ``random-init`` a seeded random backbone.
    ``layout``: the evaluated stage's folder (init cache, stage result); ``result_file``:
    where the evaluation record is written as JSON (``None``: MLflow only)."""

    config: ExperimentConfig
    protocol: str
    method: str
    dataset: str
    checkpoint: InitRef
    label: str
    layout: Optional[StageLayout] = None
    result_file: Optional[Path] = None
    tracking: Optional[TrackingTarget] = None
    steps: int = 0
    seed: int = 0
    augment: str = "all"
    images: str = "all"
    evaluates: Optional[str] = None  # the evaluated stage's run (label): a sweep's unit id
    tags: Dict[str, str] = field(default_factory=dict)
    probe_labels: str = "all"  # linear probes: labelled images per class
    resumable: bool = False  # save resume state beside result_file (a stable path: sweeps)
    stage: Optional[str] = None  # the evaluated checkpoint's stage (None: not a stage's)
    base_seed: int = 0  # the seed of the upstream stages the evaluated stage started from
    along: int = 0  # the checkpoint at ``steps`` of a run of this many steps (0: its final)
    kind = "eval"

    def describe(self) -> str:
        what = self.method if self.checkpoint.is_random else str(self.checkpoint)
        mode = self.config.probe.mode if PROTOCOL_TABLE[self.protocol].modes else \
            f"{self.config.finetune.labels} labels"
        return f"{self.label}: {self.protocol} ({mode}) of {what} on {self.dataset}"


@dataclass
class EmbedPlan:
    """Features of one dataset split under the file name prefix ``out``
    (``hpt-hpc embed``); ``inputs``: the caller's inputs (``{what: path}``) no output may
    replace."""

    config: ExperimentConfig
    dataset: str
    split: Optional[str]
    checkpoint: InitRef
    out: str
    label: str
    inputs: Dict[str, str] = field(default_factory=dict)
    tracking: Optional[TrackingTarget] = None  # where the embed run logs (lineage's)
    kind = "embed"

    def describe(self) -> str:
        return (f"{self.label}: features of {self.dataset}/{self.split or 'default split'} "
                f"from {self.checkpoint} -> {self.out}.npy")


Plan = Union[StagePlan, EvalPlan, EmbedPlan]


@dataclass
class Phase:
    """Plans submitted together (one array), after the phases named in ``after`` ended
    (``afterok``: all succeeded; ``afterany``: whatever their outcome)."""

    name: str
    plans: List[Plan]
    after: Tuple[str, ...] = ()
    dependency: str = "afterok"

    def __post_init__(self) -> None:
        if self.dependency not in DEPENDENCIES:
            raise ValueError(f"dependency '{self.dependency}' is not one of {DEPENDENCIES}")


def with_parent(phases: List[Phase], parent_run_id: Optional[str]) -> List[Phase]:
    """Every plan's tracking target nested under the pipeline run ``parent_run_id``."""
    for phase in phases:
        for plan in phase.plans:
            if plan.tracking is not None:
                plan.tracking = dataclasses.replace(plan.tracking, parent_run_id=parent_run_id)
    return phases


def config_dict(plan: Plan) -> dict:
    """The plan's resolved config as a plain dict (MLflow params, checkpoints)."""
    return config_to_dict(plan.config)


def describe_phases(phases: List[Phase]) -> str:
    """What would run, phase by phase (``hpt-hpc config show --plan``, dry runs): phases
    without jobs are left out, as the submitter leaves them out, and so are waits on
    them."""
    phases = [p for p in phases if p.plans]
    names = {p.name for p in phases}
    lines = []
    for phase in phases:
        waits = [a for a in phase.after if a in names]
        after = f", {phase.dependency} {', '.join(waits)}" if waits else ""
        jobs = f"{len(phase.plans)} job{'s' if len(phase.plans) != 1 else ''}"
        lines.append(f"phase {phase.name} ({jobs}{after})")
        lines += [f"  {plan.describe()}" for plan in phase.plans]
    return "\n".join(lines)
