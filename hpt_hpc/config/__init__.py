"""Experiment configuration: typed dataclasses loaded strictly from YAML."""
from .loader import (ConfigError, apply_overrides, config_from_dict, config_to_dict, flatten,
                     load_config, stage_settings)
from .schema import (STAGE_NAMES, VARIANTS, AugmentConfig, ComputeConfig, DataConfig,
                     DatasetConfig, ExperimentConfig, FinetuneConfig, ModelConfig, MocoConfig, OptimConfig, ProbeConfig,
                     StageConfig)

__all__ = [
    "ConfigError", "apply_overrides", "config_from_dict", "config_to_dict", "flatten",
    "load_config", "stage_settings", "STAGE_NAMES", "VARIANTS", "AugmentConfig", "DataConfig",
    "DatasetConfig", "ExperimentConfig", "ModelConfig", "MocoConfig", "OptimConfig",
    "ProbeConfig", "StageConfig", "ComputeConfig", "FinetuneConfig",
]
