"""Planning: configs and experiment files resolved once into the plan objects jobs
receive (:class:`StagePlan`, :class:`EvalPlan`, grouped in :class:`Phase` objects), and
the one method table. See ``docs/architecture.md``."""
from .methods import (ALIASES, METHODS, REFERENCES, Method, external_method, method,
                      stage_method, upstream_method)
from .planner import (ConfigPlan, GridCell, check_data, grid_cells, plan_config, plan_stages,
                      stage_plan, tracking_target, training_records)
from .record import StageRecord
from .shards import ShardPlan, shard_phases
from .plans import (PROTOCOLS, EmbedPlan, EvalPlan, Phase, StagePlan, TrackingTarget,
                    describe_phases, with_parent)

__all__ = ["ALIASES", "METHODS", "REFERENCES", "Method", "external_method", "method",
           "stage_method", "upstream_method",
           "ConfigPlan", "GridCell", "check_data", "grid_cells", "plan_config", "plan_stages",
           "stage_plan", "tracking_target", "training_records", "PROTOCOLS", "EmbedPlan",
           "EvalPlan", "Phase", "StagePlan", "TrackingTarget", "describe_phases", "with_parent",
           "StageRecord", "ShardPlan", "shard_phases"]
