"""Evaluation protocols: linear probes (cached / augmented) on frozen backbones and
semi-supervised fine-tuning; see :mod:`hpt_hpc.eval.runner` for the entry points."""
from .finetune import select_label_budget
from .metrics import binary_auroc, mean_auroc, score, top1
from .probe import (Features, Trial, extract_features, linear_probe, pixel_features,
                    standardize)

__all__ = ["Features", "Trial", "binary_auroc", "extract_features", "linear_probe",
           "mean_auroc", "pixel_features", "score", "select_label_budget", "standardize",
           "top1"]
