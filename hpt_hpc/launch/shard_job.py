"""The packing job (``hpt-hpc data shard`` on an executor): kept apart from
:mod:`hpt_hpc.launch.job` so that a packing task imports no torch (seconds per job)."""
from __future__ import annotations

import logging
from typing import Any, Dict

import submitit

from ..errors import HptError
from ..plan.shards import ShardPlan

log = logging.getLogger(__name__)


def job_logging() -> None:
    """The log format of every job."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


class ShardJob(submitit.helpers.Checkpointable):
    """The submitted packing callable: ``ShardJob()(plan)`` packs the plan's shards (kept
    when already finished and verified, so a requeued job continues); the manifest job
    (no shards) writes the manifest, or fails naming the shards that are not there."""

    def __call__(self, plan: ShardPlan) -> Dict[str, Any]:
        job_logging()
        from ..data.shards import shard_split
        result = shard_split(plan.dataset, plan.split, plan.dest, plan.shard_size,
                             seed=plan.seed, shards=list(plan.shards), log=log.info,
                             known=plan.known)
        if not plan.shards and not result["complete"]:
            missing = result["missing"]
            raise HptError(f"{plan.split}: {len(missing)} of {result['shards']} shard(s) "
                           f"missing or not as planned in {plan.dest} (first: shard "
                           f"{missing[0]}); run the same `hpt-hpc data shard` again: "
                           "finished shards are kept")
        count = result["shards"] if isinstance(result["shards"], int) \
            else len(result["shards"])
        return {"split": plan.split, "complete": result["complete"], "shards": count,
                "kept": result["kept"], "written": result["written"],
                "images": result.get("images")}
