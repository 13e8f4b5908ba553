"""Typed experiment configuration: one YAML file maps onto :class:`ExperimentConfig`.

Every section is a dataclass; unknown keys are rejected by :mod:`hpt_hpc.config.loader`.
Defaults are the small CPU-friendly settings of the quickstart; ``configs/paper/``
carries the published HPT settings.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

VARIANTS = ("full", "bn", "bn-stats", "scratch")
STAGE_NAMES = ("base", "source", "target")
DATASET_FORMATS = ("imagefolder", "filelist", "folder")  # datasets.<name>.format
BACKENDS = ("torchvision", "dali")  # data.backend
PROBE_MODES = ("cached", "augmented", "knn")  # probe.mode: features once | the paper's
# augmented probe | k-nearest-neighbour vote on the cached features


@dataclass
class DatasetConfig:
    """Where one dataset lives and how it is split.

    ``format`` is ``imagefolder`` (``path/<split>/<class>/<image>``), ``filelist``
    (``path/<split>`` is a CSV/TXT file of ``image_path[,label[,label...]]`` lines,
    image paths relative to the list's folder unless absolute) or ``folder`` (every image
    below ``path/<split>``, flat or nested, unlabelled: pretraining only; a split named
    ``.`` is ``path`` itself).
    """

    path: str = ""
    format: str = "imagefolder"
    splits: Dict[str, str] = field(
        default_factory=lambda: {"train": "train", "val": "val", "test": "test"})
    max_images: Optional[int] = None  # use only the first N training images (deterministic)


@dataclass
class ModelConfig:
    """Backbone: a torchvision ResNet layout, optionally narrowed and with a small-image stem."""

    arch: str = "resnet18"  # resnet18 | resnet50
    width: float = 1.0  # multiplier on the 64-128-256-512 stage widths
    small_stem: bool = False  # 3x3 conv, no max-pool (for 32x32-ish images)
    stem_stride: int = 1  # stride of the small stem's conv (2 halves the compute at 32x32)
    in_channels: int = 3


@dataclass
class MocoConfig:
    """MoCo-v2 hyper-parameters (He et al. 2020; Chen et al. 2020)."""

    queue_size: int = 65536  # K
    momentum: float = 0.999  # m
    temperature: float = 0.2  # T
    dim: int = 128  # projection output
    mlp: bool = True  # MoCo-v2 MLP head
    mlp_hidden: Optional[int] = None  # None: the backbone's feature width (2048 for ResNet-50)
    shuffle_bn: bool = True  # shuffle-BN across ranks; split-batch BN in one process
    bn_splits: int = 2  # single-process stand-in for shuffle-BN: key BN over this many sub-batches


@dataclass
class OptimConfig:
    """SGD with cosine decay (to 0) after an optional linear warm-up.

    ``batch_size`` is the global batch, split evenly over the ranks (as in MoCo's code).
    ``lr`` is the rate for a global batch of ``lr_batch_reference`` (``None``: equal to
    ``batch_size``); the rate used is ``lr * batch_size / lr_batch_reference`` (linear
    scaling rule), so changing the number of GPUs alone never changes the rate.
    """

    lr: float = 0.03
    lr_batch_reference: Optional[int] = None
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 256
    iterations: int = 5000
    schedule: str = "cosine"  # cosine | constant
    warmup_iterations: int = 0


@dataclass
class CropConfig:
    enabled: bool = True
    scale: List[float] = field(default_factory=lambda: [0.2, 1.0])
    ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])


@dataclass
class ColorJitterConfig:
    enabled: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    p: float = 0.8


@dataclass
class GrayscaleConfig:
    enabled: bool = True
    p: float = 0.2


@dataclass
class BlurConfig:
    enabled: bool = True
    sigma: List[float] = field(default_factory=lambda: [0.1, 2.0])
    kernel_size: Optional[int] = None  # None: about 10% of the image side, odd
    p: float = 0.5


@dataclass
class FlipConfig:
    enabled: bool = True
    p: float = 0.5


@dataclass
class AugmentConfig:
    """MoCo-v2's augmentations, each switchable (the paper's robustness study drops them)."""

    crop: CropConfig = field(default_factory=CropConfig)
    color_jitter: ColorJitterConfig = field(default_factory=ColorJitterConfig)
    grayscale: GrayscaleConfig = field(default_factory=GrayscaleConfig)
    blur: BlurConfig = field(default_factory=BlurConfig)
    flip: FlipConfig = field(default_factory=FlipConfig)


@dataclass
class DataConfig:
    """How images are read and fed: image size, channels, normalisation, loader backend."""

    backend: str = "torchvision"  # torchvision | dali
    device: str = "auto"  # DALI operators: auto | cpu | gpu
    image_size: int = 224
    channels: int = 3  # 1 for grey images (converted on load)
    mean: List[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: List[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    workers: int = 4
    max_pixels: int = 50_000_000  # larger images (read from the header) are skipped as unreadable


@dataclass
class StageConfig:
    """One HPT stage. ``init``: ``null`` (random), ``stage:<name>`` (that stage's final
    checkpoint), or a checkpoint file (this toolkit's, official MoCo, OpenSelfSup/HPT or a
    torchvision state dict). Unset optimisation fields fall back to ``optim``."""

    dataset: str = ""
    variant: str = "full"  # full (HPT) | bn (HPT-BN) | bn-stats (Base) | scratch (Target)
    init: Optional[str] = None
    iterations: Optional[int] = None
    lr: Optional[float] = None
    batch_size: Optional[int] = None
    train_head: bool = True  # variant bn: the projection head trains too (official HPT code)


@dataclass
class CheckpointConfig:
    every: int = 1000  # periodic checkpoint interval in steps (0: final only)
    keep: int = 0  # also keep the last N periodic checkpoints (step-<n>.pt, hard links)


@dataclass
class ProbeConfig:
    """Linear probe on a frozen backbone (defaults: the paper's protocol)."""

    lr: float = 30.0
    momentum: float = 0.9
    weight_decay: float = 0.0
    iterations: int = 5000
    milestones: List[int] = field(default_factory=lambda: [1651, 3333])
    batch_size: int = 512
    eval_every: int = 100
    max_train_images: Optional[int] = None  # label budget for the probe's training split
    labels_per_class: Optional[int] = None  # low-label probing: N seeded images per class
    mode: str = "cached"  # cached (features once, no augmentation) | augmented (paper) | knn
    knn_k: int = 20  # knn mode: neighbours that vote
    knn_temperature: float = 0.07  # knn mode: vote weight exp(cosine similarity / T)
    repeats: int = 1  # independent probes (seeds seed..seed+repeats-1): mean +- std
    crop_scale: List[float] = field(default_factory=lambda: [0.08, 1.0])  # augmented mode
    flip: bool = True  # augmented mode: random horizontal flip of training images
    center_crop_ratio: float = 0.875  # test: resize to size/ratio, centre-crop size


@dataclass
class FinetuneConfig:
    """Semi-supervised transfer: fine-tune the whole network on a label budget."""

    labels: int = 1000  # training images with labels (at least one per class, seeded)
    label_seed: int = 0
    lr: float = 0.01  # backbone; the paper uses 0.01 or 0.001
    head_lr_mult: float = 100.0  # the new linear head learns this much faster
    momentum: float = 0.9
    weight_decay: float = 0.0
    iterations: int = 2500
    milestones: List[int] = field(default_factory=list)  # x0.1 at these steps
    batch_size: int = 256
    eval_every: int = 100
    augment: bool = True  # random-resized-crop (+ flip when probe.flip) on training images


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

    precision: str = "auto"  # auto | fp32 | bf16
    channels_last: Optional[bool] = None  # null: on CUDA only
    fused_optimizer: str = "auto"  # auto (fused on CUDA, foreach on CPU) | fused | foreach | off
    compile: bool = False  # torch.compile the encoders (off until measured to help)
    accumulate: int = 1
    non_blocking: bool = True
    threads: Optional[int] = None  # null: cores - data.workers (on CPU)


@dataclass
class TrackingConfig:
    """MLflow tracking. ``uri``: ``null`` is the embedded store
    ``sqlite:///<output_dir>/mlflow.db`` (absolute; artifacts in ``<output_dir>/mlartifacts``),
    else ``sqlite:///<path>`` or a server ``http://host:port``. The environment variable
    ``MLFLOW_TRACKING_URI`` overrides it."""

    enabled: bool = True
    uri: Optional[str] = None
    experiment: Optional[str] = None  # default: the config's name
    model_name: Optional[str] = None  # registered model of stage checkpoints (default: experiment)
    system_metrics: bool = True  # CPU, memory, GPU readings with every flush
    flush_seconds: float = 10.0  # buffered metrics are sent in batches this often


@dataclass
class ExperimentConfig:
    """A whole HPT experiment: data, model, MoCo, optimisation, augmentation and stages."""

    name: str = "experiment"
    seed: int = 0
    output_dir: str = "outputs"
    device: str = "auto"  # auto | cpu | cuda
    # seconds between progress lines (step/total, images/s, data wait, ETA) of training,
    # feature extraction, probes and fine-tuning in logs; 0: none. A terminal gets a bar.
    progress_seconds: float = 60.0
    datasets: Dict[str, DatasetConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    stages: Dict[str, StageConfig] = field(default_factory=dict)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # Launch grid of `hpt-hpc launch`: config path (or the shorthands variant, lr,
    # iterations, dataset, batch_size, init for the launched stage, and seed) -> list of
    # values. The Cartesian product becomes one SLURM job array, each cell writing to
    # <output_dir>/grid/<cell>. (Experiment files, run by `hpt-hpc sweep`, are the other
    # way to run many stages: see hpt_hpc.plan.experiment.)
    grid: Dict[str, List[Any]] = field(default_factory=dict)
