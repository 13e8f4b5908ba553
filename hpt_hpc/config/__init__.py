"""Experiment configuration: typed dataclasses loaded strictly from YAML, the checkpoint
reference parser (:class:`InitRef`) and the output folder layout (:class:`StageLayout`)."""
from ..errors import ConfigError
from .layout import OutputLayout, StageLayout
from .loader import (apply_overrides, config_digest, config_from_dict, config_to_dict, flatten,
                     load_config, read_config_dict, stage_settings)
from .refs import InitRef, InitRefError
from .schema import (STAGE_NAMES, VARIANTS, AugmentConfig, ComputeConfig, DataConfig,
                     DatasetConfig, ExperimentConfig, FinetuneConfig, ModelConfig, MocoConfig,
                     OptimConfig, ProbeConfig, StageConfig)

__all__ = [
    "ConfigError", "apply_overrides", "config_digest", "config_from_dict", "config_to_dict", "flatten",
    "load_config", "read_config_dict", "stage_settings", "STAGE_NAMES", "VARIANTS",
    "AugmentConfig", "DataConfig", "DatasetConfig", "ExperimentConfig", "ModelConfig",
    "MocoConfig", "OptimConfig", "ProbeConfig", "StageConfig", "ComputeConfig",
    "FinetuneConfig", "InitRef", "InitRefError", "OutputLayout", "StageLayout",
]
