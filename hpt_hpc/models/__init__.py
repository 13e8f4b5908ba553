"""Models: torchvision-compatible ResNets, MoCo-v2, checkpoint I/O and training variants."""
from .moco import MoCo, cap_queue_size, concat_all_gather, projection_head
from .resnet import ResNetBackbone, build_backbone_from_config, build_resnet, feature_dim_for
from .variants import VARIANTS, configure_variant, is_bn, reestimate_bn_stats
from .weights import (CHECKPOINT_FORMAT, CheckpointInfo, CheckpointReadError,
                      IncompatibleCheckpointError, checkpoint_info, checkpoint_run_id,
                      load_checkpoint, load_initial_weights, save_checkpoint_atomic,
                      stage_checkpoint)

__all__ = [
    "MoCo", "cap_queue_size", "concat_all_gather", "projection_head",
    "ResNetBackbone", "build_backbone_from_config", "build_resnet", "feature_dim_for",
    "VARIANTS", "configure_variant", "is_bn", "reestimate_bn_stats",
    "CHECKPOINT_FORMAT", "CheckpointInfo", "CheckpointReadError", "IncompatibleCheckpointError",
    "checkpoint_info", "checkpoint_run_id", "load_checkpoint", "load_initial_weights",
    "save_checkpoint_atomic", "stage_checkpoint",
]
