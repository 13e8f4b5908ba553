"""Experiment tracking: a small tracker interface (MLflow implements it)."""
from .base import MemoryTracker, NullTracker, Tracker

__all__ = ["MemoryTracker", "NullTracker", "Tracker"]
