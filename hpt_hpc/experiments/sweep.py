"""``hpt-hpc sweep``: run an experiment file's studies through the one submitter.

Order: upstream stages (base, then source; ``afterok``) -> one array of pretraining units
(``afterok`` on the upstream jobs) -> one array of evaluations (``afterany`` on the
pretraining array: an evaluation whose checkpoint is missing fails alone with a clear
message instead of cancelling the others). Units whose MLflow run (tag ``hpt.unit``) is
FINISHED are skipped; unfinished pretraining resumes from its ``last.pt``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Set, Tuple

from ..config import config_to_dict
from ..device import available_cores
from ..hub import using_cache
from ..launch.executors import Executor, resolve_executor
from ..launch.options import SchedulerOptions
from ..launch.record import LaunchRecord
from ..launch.submit import run_phases
from ..plan import Phase, TrackingTarget, describe_phases, tracking_target
from ..plan.experiment import ExperimentSpec, prepare_offline_data
from ..plan.unit_plans import sweep_phases
from ..plan.units import (CONTROL_STAGE, CONTROL_SUFFIX, UPSTREAM, EvalUnit, Expansion,
                          PretrainUnit, expand)
from ..tracking.filters import run_filter
from ..tracking.runs import search_all
from ..tracking.store import MAX_SQLITE_WRITERS, StoreMissing, prepare_store, requires_server


@dataclass
class SweepPlan:
    """What a sweep will run now, and what it skips because it already finished."""

    expansion: Expansion
    upstream: List[str]
    pretrain: List[PretrainUnit]
    evals: List[EvalUnit]
    phases: List[Phase]
    finished: Set[str] = field(default_factory=set)
    base_seeds: List[int] = field(default_factory=lambda: [0])

    def describe(self) -> str:
        e = self.expansion
        bases = (f" (base seeds {', '.join(map(str, self.base_seeds))})"
                 if len(self.base_seeds) > 1 else "")
        upstream = ", ".join(f"{s}{bases}" for s in self.upstream) or "none"
        return (f"units: {len(e.pretrain)} pretraining, {len(e.evals)} evaluations; "
                f"to run: upstream [{upstream}], "
                f"{len(self.pretrain)} pretraining, {len(self.evals)} evaluations "
                f"({len(self.finished)} finished units skipped)")

    def describe_phases(self) -> str:
        return describe_phases(self.phases)


def finished_units(spec: ExperimentSpec, uri: Optional[str]) -> Set[str]:
    """Unit ids with a FINISHED run tagged ``hpt.sweep=<name>`` in the MLflow store (with
    tracking off, or no store yet: units whose final checkpoint or result file exists)."""
    if not uri:
        return _finished_on_disk(spec)
    try:
        runs = search_all(uri, spec.experiment, run_filter({"hpt.sweep": spec.name},
                                                           status="FINISHED")) or []
    except StoreMissing:
        return _finished_on_disk(spec)
    return {r.data.tags["hpt.unit"] for r in runs if r.data.tags.get("hpt.unit")}


def _finished_on_disk(spec: ExperimentSpec) -> Set[str]:
    layout = spec.layout
    done = {spec.upstream_id(s, b) for s in UPSTREAM for b in spec.base_seeds
            if spec.upstream_layout(s, b).final.is_file()}
    done.update(layout.finished_unit_stages())
    done.update(f"{u}{CONTROL_SUFFIX}" for u in layout.finished_unit_stages(CONTROL_STAGE))
    done.update(p.stem for p in layout.eval_results())
    return done


def plan_sweep(spec: ExperimentSpec, tracking: Optional[TrackingTarget],
               world_size: int = 1) -> SweepPlan:
    """Expand the studies and drop every unit that already finished (stages planned for
    ``world_size`` DDP ranks)."""
    expansion = expand(spec)
    done = finished_units(spec, tracking.uri if tracking else None)
    phases = sweep_phases(spec, expansion, tracking, frozenset(done), world_size)
    return SweepPlan(expansion, [s for s in expansion.upstream
                                 if any(spec.upstream_id(s, b) not in done
                                        for b in spec.base_seeds)],
                     [u for u in expansion.pretrain if u.unit_id not in done],
                     [u for u in expansion.evals if u.unit_id not in done], phases, done,
                     spec.base_seeds)


def sweep_tracking(spec: ExperimentSpec) -> Optional[TrackingTarget]:
    """Where every run of the sweep logs (the pipeline is the experiment file's name)."""
    return tracking_target(spec.base_config(), pipeline=spec.name)


def default_max_parallel(executor: Executor, uri: Optional[str], nodes: int = 1) -> int:
    """``--max-parallel`` when not given. Executors whose jobs this process runs side by
    side (local): the cores available to this process, at most the writers the tracking
    store takes (8 on a sqlite file on a local disk, 1 on a network filesystem); others: 1."""
    if not executor.parallel_here:
        return 1
    cores = available_cores()
    for n in (cores, min(cores, MAX_SQLITE_WRITERS)):
        if uri is None or requires_server(uri, n, nodes=nodes) is None:
            return n
    return 1


def run_sweep(spec: ExperimentSpec, options: SchedulerOptions, dry_run: bool = False,
              max_parallel: Optional[int] = None, folder: Optional[str] = None,
              end: bool = True) -> Tuple[SweepPlan, Optional[LaunchRecord]]:
    """Plan, then submit (slurm) or run (local: ``max_parallel`` jobs at a time across
    phases, default :func:`default_max_parallel`; debug: in this process). Returns
    ``(plan, record)``; ``record`` is None for a dry run."""
    with using_cache(options.model_cache):  # public inits: the profile's model cache
        return _run_sweep(spec, options, dry_run, max_parallel, folder, end)


def _run_sweep(spec: ExperimentSpec, options: SchedulerOptions, dry_run: bool,
               max_parallel: Optional[int], folder: Optional[str],
               end: bool) -> Tuple[SweepPlan, Optional[LaunchRecord]]:
    executor = resolve_executor(options)
    target = sweep_tracking(spec)
    if max_parallel is None:
        max_parallel = default_max_parallel(executor, target.uri if target else None,
                                            options.nodes)
    writers = executor.writers(max_parallel, options)
    if dry_run:
        return plan_sweep(spec, target, options.world_size), None
    executor.check(options)  # before anything is created
    prepare_offline_data(spec)
    if target is not None:
        prepare_store(target.uri, num_tasks=max(1, writers), nodes=options.nodes)
    plan = plan_sweep(spec, target, options.world_size)
    record = run_phases(plan.phases, options, output_dir=spec.output_dir,
                        source=str(spec.path), name=spec.name, tracking=target,
                        writers=writers, max_parallel=max_parallel, folder=folder,
                        labels=["sweep"], config=config_to_dict(spec.base_config()),
                        end=end)
    return plan, record

