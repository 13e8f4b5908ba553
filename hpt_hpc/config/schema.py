"""Typed experiment configuration: one YAML file maps onto :class:`ExperimentConfig`.

Every section is a dataclass; unknown keys are rejected by :mod:`hpt_hpc.config.loader`.
Defaults are the small CPU-friendly settings of the quickstart; ``configs/paper/``
carries the published HPT settings. Every key is declared with :func:`key`: its default,
one line of meaning and, for a closed set of values, the values. ``docs/config.md`` is
generated from these declarations (``hpt-hpc config reference``). The augmentation
sections live in :mod:`.augment`, :func:`key` in :mod:`.keys`; both are re-exported here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .augment import (AugmentConfig, BlurConfig, ColorJitterConfig, CropConfig, FlipConfig,
                      GrayscaleConfig, LocalCropsConfig)
from .keys import key
from .layout import STAGE_NAMES  # noqa: F401 - config.STAGE_NAMES, named with the folders
from .protocols import LINEAR, LINEAR_MODES, PROTOCOLS
from .refs import InitRef

VARIANTS = ("full", "bn", "bn-stats", "scratch", "last-blocks", "lora")
BLOCK_VARIANTS = ("last-blocks", "lora")  # train the last stages.<s>.blocks blocks
DATASET_FORMATS = ("imagefolder", "filelist", "folder", "shards")  # datasets.<name>.format
BACKENDS = ("torchvision", "dali")  # data.backend
PROBE_MODES = LINEAR_MODES  # probe.mode: the linear protocol's modes (config/protocols.py)
ARCHS = ("resnet18", "resnet50")  # built in; `timm:<name>` names any timm model
TIMM_PREFIX = "timm:"
SSL_METHODS = ("moco-v2", "dino")  # the rows of hpt_hpc.ssl.METHODS (ssl:)
SCHEDULES = ("cosine", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
FUSED_OPTIMIZERS = ("auto", "fused", "foreach", "off")
OPTIMIZERS = ("sgd", "adamw")
__all__ = ["AugmentConfig", "BlurConfig", "ColorJitterConfig", "CropConfig", "FlipConfig",
           "GrayscaleConfig", "LocalCropsConfig", "key"]  # re-exported (see above)


@dataclass
class DatasetConfig:
    """Where one dataset lives and how it is split.

    ``format`` is ``imagefolder`` (``path/<split>/<class>/<image>``), ``filelist``
    (``path/<split>`` is a CSV/TXT file of ``image_path[,label[,label...]]`` lines,
    image paths relative to the list's folder unless absolute) or ``folder`` (every image
    below ``path/<split>``, flat or nested, unlabelled: pretraining only; a split named
    ``.`` is ``path`` itself) or ``shards`` (``path/<split>/`` holds the tar shards and
    manifest written by ``hpt-hpc data shard``).
    """

    path: str = key("", "the dataset's folder (relative paths: to where you run)")
    format: str = key("imagefolder", "imagefolder: `path/<split>/<class>/<image>`; filelist: "
                      "`path/<split>` lists `image[,label...]`; folder: unlabelled images; "
                      "shards: `path/<split>/` written by `hpt-hpc data shard`",
                      choices=DATASET_FORMATS)
    splits: Dict[str, str] = key(doc="split name -> its folder or list file under path",
                                 factory=lambda: {"train": "train", "val": "val",
                                                  "test": "test"})
    max_images: Optional[int] = key(None, "use only the first N training images "
                                          "(deterministic); null: all")


@dataclass
class ModelConfig:
    """Backbone: a built-in torchvision-layout ResNet (optionally narrowed, with a
    small-image stem) or any timm model (``timm:<name>``)."""

    arch: str = key("resnet18", "resnet18 or resnet50 (built in), or `timm:<name>`: a timm "
                                "model (e.g. timm:resnet50, timm:vit_small_patch16_224, "
                                "timm:convnext_tiny)")
    width: float = key(1.0, "multiplier on the 64-128-256-512 stage widths (1: torchvision's)")
    small_stem: bool = key(False, "3x3 conv stem without max-pool (for 32x32-ish images)")
    stem_stride: int = key(1, "stride of the small stem's conv (2 halves the compute at 32x32)")
    in_channels: int = key(3, "input channels; must equal data.channels (timm models adapt "
                              "their first layer)")
    timm_kwargs: Dict[str, Any] = key(doc="timm models: extra arguments of "
                                          "timm.create_model (e.g. patch_size, drop_path_rate)",
                                      factory=dict)


@dataclass
class MocoConfig:
    """MoCo-v2 hyper-parameters (He et al. 2020; Chen et al. 2020)."""

    queue_size: int = key(65536, "K: negatives kept in the queue (capped to what the stage's "
                                 "data can fill)")
    momentum: float = key(0.999, "m: momentum of the key encoder's moving average")
    temperature: float = key(0.2, "T: softmax temperature of the contrastive loss")
    dim: int = key(128, "output dimension of the projection head")
    mlp: bool = key(True, "MoCo-v2's MLP projection head (false: one linear layer, MoCo v1)")
    mlp_hidden: Optional[int] = key(None, "hidden width of the MLP head; null: the backbone's "
                                          "feature width (2048 for ResNet-50)")
    shuffle_bn: bool = key(True, "shuffle-BN across ranks; split-batch BN in one process "
                                 "(no effect on backbones without BatchNorm: ViT, ConvNeXt)")
    bn_splits: int = key(2, "single-process stand-in for shuffle-BN: key BN over this many "
                            "sub-batches")


@dataclass
class DinoConfig:
    """DINO hyper-parameters (Caron et al. 2021; defaults: the paper's)."""

    out_dim: int = key(65536, "prototypes: output width of the DINO head")
    hidden_dim: int = key(2048, "hidden width of the head's MLP")
    bottleneck_dim: int = key(256, "width of the head's bottleneck (L2-normalised)")
    norm_last_layer: bool = key(True, "the weight-normalised last layer keeps unit norm "
                                      "(its weight_g frozen at 1)")
    freeze_last_layer_steps: int = key(1000, "the last layer's gradient is dropped for the "
                                             "first N steps (the paper: one epoch)")
    teacher_temp: float = key(0.04, "teacher softmax temperature after its warm-up")
    warmup_teacher_temp: float = key(0.04, "teacher temperature at step 0")
    warmup_teacher_temp_steps: int = key(0, "steps of linear warm-up from "
                                            "warmup_teacher_temp to teacher_temp")
    student_temp: float = key(0.1, "student softmax temperature")
    center_momentum: float = key(0.9, "momentum of the teacher-output centre (1: the centre "
                                      "stays 0, no centring)")
    momentum_teacher: float = key(0.996, "EMA momentum of the teacher at step 0, raised to 1 "
                                         "by a cosine schedule")
    collapse_min_feature_std: float = key(1e-4, "stop when the mean per-dimension std of the "
                                                "student's L2-normalised backbone features "
                                                "falls below this (0: never)")
    collapse_min_kl: float = key(1e-3, "stop when the mean KL(teacher || student) falls "
                                       "below this: both collapses drive it to 0 (0: never)")


@dataclass
class OptimConfig:
    """SGD or AdamW with cosine decay (to 0) after an optional linear warm-up.

    ``batch_size`` is the global batch, split evenly over the ranks (as in MoCo's code).
    ``lr`` is the rate for a global batch of ``lr_batch_reference`` (``None``: equal to
    ``batch_size``); the rate used is ``lr * batch_size / lr_batch_reference`` (linear
    scaling rule), so changing the number of GPUs alone never changes the rate.
    """

    lr: float = key(0.03, "learning rate for a global batch of lr_batch_reference")
    lr_batch_reference: Optional[int] = key(None, "batch the lr is given for; the rate used "
                                                  "is lr x batch_size / this (null: batch_size)")
    optimizer: str = key("sgd", "sgd (with momentum) or adamw (betas 0.9, 0.999; DINO's)",
                         choices=OPTIMIZERS)
    weight_decay: float = key(1e-4, "weight decay (SGD: L2 in the gradient; AdamW: "
                                    "decoupled)")
    weight_decay_end: Optional[float] = key(None, "weight decay at the last step, reached by "
                                                  "a cosine from weight_decay (DINO: 0.04 to "
                                                  "0.4); null: constant")
    decay_norms_and_biases: bool = key(True, "weight decay on biases and normalisation "
                                             "parameters (every tensor of <= 1 dimension) "
                                             "too; DINO: false")
    momentum: float = key(0.9, "SGD momentum (adamw: unused)")
    clip_grad: Optional[float] = key(None, "cap on each parameter's gradient norm, applied "
                                           "before the step (DINO uses 3.0); null: off")
    batch_size: int = key(256, "global batch (split evenly over the ranks)")
    iterations: int = key(5000, "training steps of a stage "
                                "(`stages.<name>.iterations` overrides it)")
    schedule: str = key("cosine", "learning-rate schedule after the warm-up (cosine: to 0)",
                        choices=SCHEDULES)
    warmup_iterations: int = key(0, "steps of linear warm-up from 0")


@dataclass
class DataConfig:
    """How images are read and fed: image size, channels, normalisation, loader backend."""

    backend: str = key("torchvision", "the input pipeline (dali needs NVIDIA DALI; without "
                                      "it torchvision runs, with one warning)",
                       choices=BACKENDS)
    device: str = key("auto", "where DALI's operators run: auto, cpu or gpu")
    image_size: int = key(224, "side of the square crops fed to the network")
    channels: int = key(3, "1: grey, 3: RGB (both converted on load), other N: N-band stacks")
    mean: List[float] = key(doc="per-channel mean on the 0..1 scale (`hpt-hpc data stats`)",
                            factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = key(doc="per-channel std on the 0..1 scale (`hpt-hpc data stats`)",
                           factory=lambda: [0.229, 0.224, 0.225])
    workers: int = key(4, "loader worker processes per rank (0: load in the main process)")
    max_pixels: int = key(2 ** 26, "images that decode to more bytes (width x height x bands "
                                   "x bytes per sample, every page or frame read; from the "
                                   "header) are skipped as unreadable: 64 MiB keeps one decode "
                                   "with its conversion under ~256 MB")
    shuffle_buffer: int = key(1000, "format shards: samples each loader stream holds to "
                                    "shuffle from (1: the packed order; shard order is "
                                    "shuffled per epoch anyway)")


@dataclass
class LoraConfig:
    """LoRA adapters of variant ``lora`` (through peft; the ExPLoRA recipe): on the
    Linear/Conv2d layers of the frozen blocks, merged into plain weights wherever a
    checkpoint is read as a backbone."""

    rank: int = key(8, "r: the rank of each adapter")
    alpha: float = key(8.0, "an adapter adds alpha / rank x B A to its layer's weight")
    targets: List[str] = key(doc="layer names (or name endings) inside a block that get "
                                 "adapters; []: the family's (ViT: qkv, ConvNeXt: fc1, fc2, "
                                 "ResNet: conv1, conv2, conv3)", factory=list)


@dataclass
class StageConfig:
    """One HPT stage. ``init``: ``null`` (random), ``stage:<name>`` (that stage's final
    checkpoint), a checkpoint file (this toolkit's, official MoCo, OpenSelfSup/HPT, a
    torchvision/timm state dict or safetensors file), a registry reference or public
    weights by name (:class:`~hpt_hpc.config.refs.InitRef`). Unset optimisation fields
    fall back to ``optim``."""

    dataset: str = key("", "name of the dataset under datasets")
    variant: str = key("full", "what trains: full (HPT), bn (HPT-BN: normalisation layers "
                               "+ head), bn-stats (Base: BN statistics only), scratch "
                               "(Target), last-blocks (HPT-LB: + the last blocks), lora "
                               "(HPT-LoRA: + LoRA adapters on the other blocks)",
                       choices=VARIANTS)
    init: InitRef = key(InitRef(), "start weights: null, `stage:<name>`, a file, "
                                    "`models:/<name>@<alias>`, `runs:/<id>/<path>`, public "
                                    "weights `timm:<model>.<tag>`, "
                                    "`torchvision:<Enum>.<NAME>`, `hf-hub:<org>/<name>` "
                                    "(from the model cache: `hpt-hpc models fetch`)")
    init_partial: bool = key(False, "load only the init's backbone tensors that fit and "
                                    "report the rest (default: any missing, unexpected or "
                                    "mis-shaped tensor refuses the init)")
    iterations: Optional[int] = key(None, "training steps (null: optim.iterations)")
    lr: Optional[float] = key(None, "learning rate (null: optim.lr), linearly scaled the same")
    batch_size: Optional[int] = key(None, "global batch (null: optim.batch_size)")
    train_head: bool = key(True, "variants bn, last-blocks, lora: the projection head "
                                 "trains too (official HPT code)")
    blocks: int = key(1, "variants last-blocks and lora: the last N blocks of the backbone "
                         "train whole (0: none)")
    lora: LoraConfig = key(doc="variant lora: the adapters", factory=LoraConfig)
    ssl: Optional[str] = key(None, "this stage's self-supervised method (null: the top-level "
                                   "ssl); a stage after another method's takes its backbone, "
                                   "heads start fresh", choices=SSL_METHODS)


@dataclass
class CheckpointConfig:
    """When a stage saves."""

    every: int = key(1000, "periodic checkpoint interval in steps (0: final only)")
    keep: int = key(0, "also keep the last N periodic checkpoints (`step-<n>.pt`, hard "
                      "links)")
    at: List[int] = key(doc="also save the checkpoint of each of these steps and keep it as "
                            "`step-<n>.pt` (a hard link), never pruned by `keep`; steps at or "
                            "after a stage's end keep nothing (a study's `probe_at` sets it)",
                        factory=list)
    resume_changes: List[str] = key(
        doc="settings allowed to differ from the resume checkpoint's: `optim.lr`, "
            "`stages.<name>.lr` (a lower rate after a divergence); each change is logged, "
            "tagged `hpt.resume_changes` and kept in the stage's result.json",
        factory=list)


@dataclass
class ProbeConfig:
    """Linear probe on a frozen backbone (defaults: the paper's protocol)."""

    lr: float = key(30.0, "SGD learning rate of the linear classifier")
    momentum: float = key(0.9, "SGD momentum")
    weight_decay: float = key(0.0, "SGD weight decay")
    iterations: int = key(5000, "probe training steps")
    milestones: List[int] = key(doc="steps at which the lr is multiplied by 0.1",
                                factory=lambda: [1651, 3333])
    batch_size: int = key(512, "probe batch")
    eval_every: int = key(100, "val and test are scored every this many steps")
    max_train_images: Optional[int] = key(None, "label budget for the probe's training "
                                                "split (null: all)")
    labels_per_class: Optional[int] = key(None, "low-label probing: N seeded images per "
                                                "class (null: all)")
    mode: str = key(PROTOCOLS[LINEAR].default_mode, "how the linear evaluation runs: a "
                    "probe mode (the modes of `hpt-hpc probe --help`)", choices=PROBE_MODES,
                    shown="a probe mode of [evaluation.md](evaluation.md)")
    knn_k: int = key(20, "knn mode: neighbours that vote")
    knn_temperature: float = key(0.07, "knn mode: vote weight exp(cosine similarity / T)")
    repeats: int = key(1, "independent probes (seeds seed..seed+repeats-1): mean +- std")
    crop_scale: List[float] = key(doc="augmented mode: [low, high] area of the random crop",
                                  factory=lambda: [0.08, 1.0])
    flip: bool = key(True, "augmented mode: random horizontal flip of training images")
    center_crop_ratio: float = key(0.875, "test view: resize to image_size / ratio, "
                                          "centre-crop image_size")


@dataclass
class FinetuneConfig:
    """Semi-supervised transfer: fine-tune the whole network on a label budget."""

    labels: int = key(1000, "training images with labels (at least one per class, seeded)")
    label_seed: int = key(0, "seed of the labelled subset")
    lr: float = key(0.01, "backbone learning rate (the paper uses 0.01 or 0.001)")
    head_lr_mult: float = key(100.0, "the new linear head learns this much faster")
    momentum: float = key(0.9, "SGD momentum")
    weight_decay: float = key(0.0, "SGD weight decay")
    iterations: int = key(2500, "fine-tuning steps")
    milestones: List[int] = key(doc="steps at which the lr is multiplied by 0.1",
                                factory=list)
    batch_size: int = key(256, "fine-tuning batch")
    eval_every: int = key(100, "val and test are scored every this many steps")
    augment: bool = key(True, "random-resized-crop (+ flip when probe.flip) on training "
                              "images")


@dataclass
class ComputeConfig:
    """Speed switches of the training step (see ``benchmarks/train_throughput.py``).

    ``precision``: ``auto`` is bf16 autocast on CUDA and fp32 on CPU; ``bf16`` forces
    autocast (also on CPU), ``fp32`` disables it. ``accumulate``: gradient-accumulation
    micro-steps per optimiser step (the global batch is split into that many parts).
    ``threads``: torch intra-op threads of training and evaluation; ``null`` is this
    process's cores minus the loader workers (fastest). On CPU the results depend on it
    (kernels split their sums by thread): a number gives the same bits on any core count
    of the same CPU kind (README, *What is reproducible*).
    """

    precision: str = key("auto", "auto: bf16 autocast on CUDA, fp32 on CPU", choices=PRECISIONS)
    channels_last: Optional[bool] = key(None, "channels-last memory format (null: on CUDA "
                                              "only)")
    fused_optimizer: str = key("auto", "SGD kernel: auto is fused on CUDA, foreach on CPU",
                               choices=FUSED_OPTIMIZERS)
    compile: bool = key(False, "torch.compile the encoders (off until measured to help)")
    accumulate: int = key(1, "gradient-accumulation micro-steps per optimiser step")
    non_blocking: bool = key(True, "host-to-device copies do not wait (pinned memory)")
    threads: Optional[int] = key(None, "torch intra-op threads of training and evaluation "
                                       "(null: cores - data.workers); results depend on it "
                                       "on CPU")


@dataclass
class TrackingConfig:
    """MLflow tracking. ``uri``: ``null`` is the embedded store
    ``sqlite:///<output_dir>/mlflow.db`` (absolute; artifacts in ``<output_dir>/mlartifacts``),
    else ``sqlite:///<path>`` or a server ``http://host:port``. The environment variable
    ``MLFLOW_TRACKING_URI`` overrides it."""

    enabled: bool = key(True, "log to MLflow at all")
    uri: Optional[str] = key(None, "null: `sqlite:///<output_dir>/mlflow.db`; else "
                                   "`sqlite:///<path>` or `http://host:port`")
    experiment: Optional[str] = key(None, "MLflow experiment (null: the config's name)")
    model_name: Optional[str] = key(None, "registered model of stage checkpoints (null: the "
                                          "experiment)")
    system_metrics: bool = key(True, "CPU, memory, GPU readings with every flush")
    flush_seconds: float = key(10.0, "buffered metrics are sent in batches this often")


@dataclass
class ExperimentConfig:
    """A whole HPT experiment: data, model, MoCo, optimisation, augmentation and stages."""

    name: str = key("experiment", "the experiment's name (MLflow experiment, pipeline run)")
    seed: int = key(0, "seed of weights, data order and augmentation")
    ssl: str = key("moco-v2", "the self-supervised method stages train with (hpt_hpc.ssl)",
                   choices=SSL_METHODS)
    output_dir: str = key("outputs", "where stages, evaluations and the MLflow store go")
    device: str = key("auto", "auto (CUDA when visible), cpu, cuda or `cuda:<n>`")
    progress_seconds: float = key(60.0, "seconds between progress lines of long loops "
                                        "(0: none; a terminal gets a bar)")
    datasets: Dict[str, DatasetConfig] = key(doc="dataset name -> where it lives",
                                             factory=dict)
    model: ModelConfig = key(doc="the backbone", factory=ModelConfig)
    moco: MocoConfig = key(doc="MoCo-v2", factory=MocoConfig)
    dino: DinoConfig = key(doc="DINO", factory=DinoConfig)
    optim: OptimConfig = key(doc="pretraining optimiser", factory=OptimConfig)
    augment: AugmentConfig = key(doc="pretraining augmentations", factory=AugmentConfig)
    data: DataConfig = key(doc="image reading and feeding", factory=DataConfig)
    stages: Dict[str, StageConfig] = key(doc="stage name (base, source, target) -> its "
                                             "settings", factory=dict)
    checkpoint: CheckpointConfig = key(doc="checkpoint saving", factory=CheckpointConfig)
    probe: ProbeConfig = key(doc="linear probe", factory=ProbeConfig)
    finetune: FinetuneConfig = key(doc="semi-supervised fine-tuning", factory=FinetuneConfig)
    compute: ComputeConfig = key(doc="speed switches", factory=ComputeConfig)
    tracking: TrackingConfig = key(doc="MLflow tracking", factory=TrackingConfig)
    # Launch grid of `hpt-hpc launch`: the Cartesian product becomes one SLURM job array,
    # each cell writing to <output_dir>/grid/<cell>. (Experiment files, run by
    # `hpt-hpc sweep`, are the other way to run many stages: see hpt_hpc.plan.experiment.)
    grid: Dict[str, List[Any]] = key(doc="launch grid: config path (or variant, lr, "
                                         "iterations, dataset, batch_size, init, seed) -> "
                                         "values; one job array", factory=dict)
