"""``hpt-hpc launch``, ``train`` and ``probe``/``finetune``/``embed`` on an executor as
library calls: a config read once, planned, and handed to the one submitter."""
from __future__ import annotations

from contextlib import ExitStack
from typing import Any, Optional, Sequence, Tuple

from ..config import InitRef, config_to_dict, read_config_dict
from ..hub import using_cache
from ..plan import Phase, StagePlan, plan_config
from ..train.resume import stage_lock
from .executors import resolve_executor
from .options import SchedulerOptions
from .record import LaunchRecord
from .submit import run_phases


def launch(config_path: str, stages: Sequence[str], options: SchedulerOptions,
           overrides: Sequence[str] = (), folder: Optional[str] = None) -> LaunchRecord:
    """Submit ``stages`` (one, or a chain: each stage ``afterok`` on the previous and
    starting from its checkpoint); the config's ``grid`` makes the last stage an array.
    Everything is checked before anything is submitted (public inits in the profile's
    model cache)."""
    with using_cache(options.model_cache):
        planned = plan_config(read_config_dict(config_path), overrides, stages,
                              world_size=options.world_size, handover=True, where=config_path)
        cfg = planned.config
        return run_phases(planned.phases, options, output_dir=cfg.output_dir,
                          source=config_path, name=cfg.name, tracking=planned.tracking,
                          writers=len(planned.phases[-1].plans), folder=folder, wait=False,
                          labels=list(stages), config=config_to_dict(cfg))


def train(config_path: str, stages: Sequence[str] = (), overrides: Sequence[str] = (),
          init: Optional[str] = None) -> LaunchRecord:
    """Run ``stages`` (default: every stage, in order, each with its configured init) in
    this process: the local single-GPU/CPU debug mode. ``init`` replaces the first
    stage's init."""
    first = InitRef.parse(init, "--init") if init is not None else None
    planned = plan_config(read_config_dict(config_path), overrides, stages or None,
                          first_init=first, where=config_path)
    cfg = planned.config
    with ExitStack() as locks:  # a run refused by a lock touches nothing shared
        for plan in (p for phase in planned.phases for p in phase.plans):
            if isinstance(plan, StagePlan):
                locks.enter_context(stage_lock(plan.layout, plan.label))
        return run_phases(planned.phases, SchedulerOptions(executor="debug"),
                          output_dir=cfg.output_dir, source=config_path, name=cfg.name,
                          tracking=planned.tracking,
                          labels=[p.name for p in planned.phases], config=config_to_dict(cfg))


def submit_one(plan: Any, options: SchedulerOptions, source: str,
               folder: Optional[str] = None) -> Tuple[LaunchRecord, Any]:
    """One plan that is not a stage (``hpt-hpc probe``/``finetune``/``embed`` with an
    ``--executor``) as one job on the options' executor; its run is filed where the plan
    says (no pipeline run of its own). Returns the launch record and the job's result:
    ``None`` when the job runs on after this call (slurm)."""
    record = run_phases([Phase(plan.kind, [plan])], options,
                        output_dir=plan.config.output_dir, source=source, name=plan.label,
                        tracking=None, folder=folder, wait=True, labels=[plan.label])
    if resolve_executor(options).detached(wait=True):
        return record, None
    return record, record.live[record.jobs[0].job_id].result()


def pack_shards(phases: Sequence[Phase], options: SchedulerOptions, dest: str, source: str,
                folder: Optional[str] = None) -> LaunchRecord:
    """``hpt-hpc data shard`` on an executor: the phases of
    :func:`~hpt_hpc.plan.shards.shard_phases` (an array over shard ranges per split, then
    its manifest job); records and logs under ``dest``. Local waits for the jobs; slurm
    returns once they are submitted."""
    return run_phases(list(phases), options, output_dir=dest, source=source,
                      name="data-shard", tracking=None, folder=folder, wait=True,
                      labels=["data-shard"])
