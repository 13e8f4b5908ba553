"""Models: encoders (built-in ResNets, timm), checkpoint I/O and schema, initial weights
of every accepted layout, training variants, exports. The ssl methods that train them live
in :mod:`hpt_hpc.ssl`."""
from .backbones import (TimmEncoder, backbone_for_features, backbone_state_dict, build_encoder,
                        encoder_from_config, is_timm)
from .loading import (CheckpointInfo, Weights, checkpoint_info, load_backbone_into,
                      read_weights)
from .resnet import ResNetBackbone, build_backbone_from_config, build_resnet, feature_dim_for
from .variants import VARIANTS, configure_variant, is_bn, is_norm, reestimate_bn_stats
from .weights import (CHECKPOINT_FORMAT, SKIPPED_KEY, CheckpointReadError,
                      IncompatibleCheckpointError, checkpoint_run_id, load_checkpoint, save_checkpoint_atomic,
                      stage_checkpoint)

__all__ = [
    "TimmEncoder", "backbone_for_features", "backbone_state_dict", "build_encoder",
    "encoder_from_config", "is_timm",
    "CheckpointInfo", "Weights", "checkpoint_info", "load_backbone_into", "read_weights",
    "ResNetBackbone", "build_backbone_from_config", "build_resnet", "feature_dim_for",
    "VARIANTS", "configure_variant", "is_bn", "is_norm", "reestimate_bn_stats",
    "CHECKPOINT_FORMAT", "SKIPPED_KEY", "CheckpointReadError", "IncompatibleCheckpointError",
    "checkpoint_run_id", "load_checkpoint", "save_checkpoint_atomic", "stage_checkpoint",
]
