"""Training: the MoCo-v2 stage engine and the runner of a stage plan."""
from .distributed import DistInfo
from .engine import learning_rate, run_stage
from .stage import build_stage_loader, open_stage_tracker, run_plan

__all__ = ["DistInfo", "learning_rate", "run_stage", "build_stage_loader",
           "open_stage_tracker", "run_plan"]
