"""Datasets: listing, decoding, preparing, checking and (torch) loading of images.

Listing, decoding, ``prepare`` and ``check`` need only PIL/numpy; the transform and loader
names are imported from torch-based modules on first access, so ``import hpt_hpc.data``
stays fast for the CLI.
"""
from importlib import import_module

from .check import check_dataset, format_report
from .images import UnreadableImage, load_image
from .prepare import DATASETS, prepare_dataset
from .sources import IMAGE_EXTENSIONS, DatasetError, ImageRecord, list_split

_LAZY = {
    "build_two_view_transform": "transforms", "build_eval_transform": "transforms",
    "build_probe_train_transform": "transforms", "TwoViewTransform": "transforms",
    "ImageDataset": "loader", "SkippedImages": "loader", "PretrainLoader": "loader",
    "EvalLoader": "loader", "build_pretrain_loader": "loader", "build_eval_loader": "loader",
    "collate_skipping": "loader",
    "DaliPretrainLoader": "dali_loader", "DaliEvalLoader": "dali_loader",  # need NVIDIA DALI
}

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "DatasetError", "ImageRecord", "UnreadableImage",
           "check_dataset", "format_report", "list_split", "load_image", "prepare_dataset",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
