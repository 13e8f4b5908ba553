"""Datasets: listing, decoding, preparing, checking and (torch) loading of images.

Listing, decoding, ``prepare`` and ``check`` need only PIL/numpy; the spec, transform and
loader names are imported from their modules on first access, so ``import hpt_hpc.data``
stays fast for the CLI. Layers (no module imports one above it): ``specs`` (pure) ->
``transforms`` / ``dataset`` -> ``loader`` (torchvision) and ``dali_loader`` (DALI) ->
``backends`` (picks one by ``data.backend``).
"""
from importlib import import_module

from .check import check_dataset, format_report
from .images import UnreadableImage, load_image
from .prepare import DATASETS, prepare_dataset
from .sources import IMAGE_EXTENSIONS, DatasetError, ImageRecord, index_split, list_split
from .table import RecordTable

_LAZY = {
    "EvalSpec": "specs", "eval_spec": "specs", "normalisation": "specs",
    "blur_kernel_size": "specs", "ViewCrop": "specs", "view_crops": "specs",
    "build_pretrain_transform": "transforms", "build_eval_transform": "transforms",
    "build_probe_train_transform": "transforms", "MultiCropTransform": "transforms",
    "ImageDataset": "dataset", "SkippedImages": "dataset", "collate_skipping": "dataset",
    "ShardSampler": "dataset",
    "PretrainLoader": "loader", "EvalLoader": "loader",
    "BACKENDS": "backends", "build_pretrain_loader": "backends",
    "build_eval_loader": "backends",
    "DaliPretrainLoader": "dali_loader", "DaliEvalLoader": "dali_loader",  # need NVIDIA DALI
}

__all__ = ["DATASETS", "IMAGE_EXTENSIONS", "DatasetError", "ImageRecord", "RecordTable",
           "UnreadableImage", "check_dataset", "format_report", "index_split", "list_split",
           "load_image", "prepare_dataset",
           *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
