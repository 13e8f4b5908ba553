"""What runs inside each task: :class:`StageJob` (one DDP rank of one MoCo-v2 stage,
preemptible), :class:`EvalJob` (one evaluation) and :class:`EmbedJob` (one embedding).
Each receives a plan object and nothing else (the launcher knows no model).

Preemption: the preemption signal (submitit's, SIGUSR2 by default, and SIGUSR1) only sets
a flag; the engine checks it after every step, all ranks agree on it, rank 0 writes a full
checkpoint at that step boundary, and then submitit's own handler requeues the job, which
restarts from the stage's ``last.pt`` at the saved step.
"""
from __future__ import annotations

import logging
import os
import signal
from typing import Any, Dict, Optional

import submitit

from ..eval.embed import run_embed_plan
from ..eval.execute import run_eval_plan
from ..plan import EmbedPlan, EvalPlan, ShardPlan, StagePlan
from ..train import DistInfo, run_plan
from .shard_job import ShardJob, job_logging as _logging

log = logging.getLogger(__name__)


def init_distributed() -> DistInfo:
    """Ranks from submitit's environment; NCCL on GPUs, gloo on CPU. One task: no group."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (debug executor): one process
        return DistInfo()
    if env.num_tasks <= 1:
        return DistInfo(0, 1, env.local_rank)
    import torch
    import torch.distributed as dist
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    log.info("rank %d/%d (local %d) on %s, backend %s, master %s:%s", env.global_rank,
             env.num_tasks, env.local_rank, env.hostname, backend,
             os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    return DistInfo(env.global_rank, env.num_tasks, env.local_rank)


class PreemptionFlag:
    """Catches the preemption signals and answers the engine's ``should_stop(step)``."""

    SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

    def __init__(self, dist: DistInfo):
        self.dist = dist
        self.requested = False
        self.signum: Optional[int] = None
        self.submitit_handler: Any = None

    def install(self) -> "PreemptionFlag":
        # submitit's preemption signal by its public name (``USR2`` unless its
        # environment variable names another); outside a submitit job: no handler there
        sig = getattr(signal, f"SIG{submitit.JobEnvironment.USR_SIG}", None)
        self.submitit_handler = signal.getsignal(sig) if sig is not None else None
        for sig in self.SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("received %s: will checkpoint at the next step boundary",
                    signal.Signals(signum).name)
        self.requested, self.signum = True, signum

    def __call__(self, step: int) -> bool:
        if self.dist.world_size == 1:
            return self.requested
        import torch
        import torch.distributed as dist
        device = torch.device("cuda", self.dist.local_rank) if torch.cuda.is_available() \
            else torch.device("cpu")
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.requested = bool(flag.item() > 0)
        return self.requested

    def requeue(self) -> None:
        """Hand over to submitit's handler: it calls ``checkpoint()``, requeues, exits."""
        handler = self.submitit_handler
        if callable(handler):
            handler(self.signum or signal.SIGUSR2, None)


class StageJob(submitit.helpers.Checkpointable):
    """The submitted stage callable: ``StageJob()(plan)``. ``checkpoint()`` (inherited)
    resubmits the same plan; the stage folder's ``last.pt`` makes the requeued run resume
    at the saved step. Returns the stage's :class:`~hpt_hpc.plan.record.StageRecord` as a
    dict (``StageRecord.from_json`` reads it back)."""

    def __call__(self, plan: StagePlan) -> Dict[str, Any]:
        _logging()
        dist_info = init_distributed()
        flag = PreemptionFlag(dist_info).install()
        try:
            result = run_plan(plan, dist=dist_info, should_stop=flag)
        finally:
            _teardown(dist_info)
        if not result.completed and flag.requested:
            if dist_info.is_main:
                flag.requeue()  # does not return when the requeue succeeds
            result.interrupted = True
        return result.to_json()


class EvalJob(submitit.helpers.Checkpointable):
    """The submitted evaluation callable: ``EvalJob()(plan)``; returns the record as a
    dict (also logged to MLflow and written to the plan's result file). On a time limit
    or preemption ``checkpoint()`` (inherited) requeues the same plan, which evaluates
    again from the start."""

    def __call__(self, plan: EvalPlan) -> Dict[str, Any]:
        _logging()
        record, _ = run_eval_plan(plan)
        return record.to_json()


class EmbedJob(submitit.helpers.Checkpointable):
    """The submitted embedding callable: ``EmbedJob()(plan)``; returns the files written,
    rows and dimensions. Requeued, it writes the features again (files are replaced
    whole)."""

    def __call__(self, plan: EmbedPlan) -> Dict[str, Any]:
        _logging()
        return run_embed_plan(plan)


JOBS = {StagePlan.kind: StageJob, EvalPlan.kind: EvalJob, EmbedPlan.kind: EmbedJob,
        ShardPlan.kind: ShardJob}


def job_for(plan: Any) -> Any:
    """The callable that runs ``plan`` (by its kind)."""
    return JOBS[plan.kind]()


def _teardown(dist_info: DistInfo) -> None:
    if dist_info.world_size > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            import gc
            gc.collect()  # a DDP reducer left in a cycle would hold the group past exit
            dist.destroy_process_group()
