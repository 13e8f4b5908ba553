"""hpt-hpc: Hierarchical PreTraining (MoCo-v2 in stages) for SLURM clusters.

The Python API (:mod:`hpt_hpc.api`: ``load_backbone``, ``embed``, ``results``, ``export``,
``Backbone``, ``Preprocessing``) is imported on the first use of one of its names, so
``import hpt_hpc`` and ``hpt-hpc --help`` stay fast (no torch).
"""
from importlib import import_module

__version__ = "0.1.0"
API = ("Backbone", "Preprocessing", "embed", "export", "load_backbone", "results")


def __getattr__(name):
    if name in API:
        return getattr(import_module("hpt_hpc.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
