"""Training: the MoCo-v2 stage engine and its helpers."""
from .distributed import DistInfo
from .engine import FINAL, LAST, StageResult, learning_rate, run_stage

__all__ = ["DistInfo", "FINAL", "LAST", "StageResult", "learning_rate", "run_stage"]
