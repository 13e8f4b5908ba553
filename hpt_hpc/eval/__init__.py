"""Evaluation: linear probes on frozen backbones."""
from .probe import (Features, ProbeResult, extract_features, linear_probe, pixel_features,
                    standardize)

__all__ = ["Features", "ProbeResult", "extract_features", "linear_probe", "pixel_features",
           "standardize"]
