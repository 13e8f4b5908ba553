"""DALI graphs: the pretraining views per image (2 global + ``augment.local_crops.number``
local, :func:`~hpt_hpc.data.specs.view_crops`) and the evaluation transforms (the DALI form
of :class:`~hpt_hpc.data.specs.EvalSpec`).

Driven by the same ``augment``/``data`` config as the torchvision reference
(:mod:`hpt_hpc.data.transforms`); per view, on DALI CPU operators (``device: cpu``) or
nvJPEG ``mixed`` decoding and GPU operators (``device: gpu``):

* crop: ``random_resized_crop`` (the view's scale and ratio, 10 attempts, antialiased
  linear), or resize + centre crop when disabled (global views only);
* colour jitter and grayscale (each with its ``p``): by default not in the graph but one
  affine colour map per view applied by torch to the output batch
  (:mod:`hpt_hpc.data.dali_colour`), because DALI's CPU colour operators cost ~1.1 ms per
  224x224 view. ``colour_in_dali`` keeps them in DALI (for comparison): brightness and
  contrast in one ``brightness_contrast`` pivoting on the view's mean luma, as torchvision's
  contrast does (DALI's default pivot is a fixed grey); saturation, hue (in degrees:
  torchvision's 0.1 of a turn is +-36 degrees) and grayscale (saturation 0, an exact luma)
  in one ``color_twist``;
* blur (with ``p``): sigma ~ U(sigma range); window ``2*ceil(3 sigma)+1`` capped at
  ``blur.kernel_size`` (None: ~10% of the side). Beyond 3 sigma the kernel holds < 0.3% of
  its weight, so this is the capped kernel at a fraction of its cost for small sigmas
  (see :func:`_blur` for the CPU implementation);
* flip (with ``p``) fused with normalisation and HWC->CHW in ``crop_mirror_normalize``.

Images are decoded once and augmented once per view. Randomness comes from the pipeline
seed.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

import nvidia.dali.fn as fn
import nvidia.dali.math as dmath
import nvidia.dali.types as types
from nvidia.dali import pipeline_def

from ..errors import HptError
from .specs import EvalSpec, ViewCrop, blur_kernel_size, normalisation, view_crops

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, DataConfig

DEVICES = ("auto", "cpu", "gpu")
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


@dataclass(frozen=True)
class ViewSpec:
    """One augmented view, in DALI's terms (pixel values 0..255)."""

    size: int
    channels: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    crop: Optional[Tuple[Tuple[float, float], Tuple[float, float]]] = None  # scale, ratio
    brightness: float = 0.0  # factor ~ U(max(0, 1-b), 1+b); 0: off
    contrast: float = 0.0
    saturation: float = 0.0
    hue_degrees: float = 0.0  # shift ~ U(-h, h)
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_sigma: Optional[Tuple[float, float]] = None
    blur_max_window: int = 0
    blur_p: float = 0.0
    blur_fixed_window: bool = False  # always the capped window (slower; for comparison)
    blur_cpu_filter: bool = True  # False: DALI's gaussian_blur on the CPU too (much slower)
    colour_in_dali: bool = False  # True: jitter/grayscale by DALI operators (slower on CPU)
    flip_p: float = 0.0


def _base(data: "DataConfig") -> dict:
    mean, std = normalisation(data)
    return dict(size=int(data.image_size), channels=int(data.channels),
                mean=tuple(255.0 * m for m in mean), std=tuple(255.0 * s for s in std))


def view_spec(aug: "AugmentConfig", data: "DataConfig") -> ViewSpec:
    """The MoCo-v2 (global) view of the config, with the torchvision backend's enable rules
    (the colour fields drive :class:`~hpt_hpc.data.dali_colour.ColourStage` by default)."""
    spec = _base(data)
    crop = view_crops(aug, data)[0]
    if crop.scale is not None:
        spec["crop"] = (crop.scale, crop.ratio)
    cj, colour = aug.color_jitter, data.channels == 3
    if cj.enabled and cj.p > 0:
        spec.update(brightness=float(cj.brightness), contrast=float(cj.contrast),
                    saturation=float(cj.saturation) if colour else 0.0,
                    hue_degrees=360.0 * float(cj.hue) if colour else 0.0)
        if any(spec[k] for k in ("brightness", "contrast", "saturation", "hue_degrees")):
            spec["jitter_p"] = float(cj.p)
    if aug.grayscale.enabled and colour:
        spec["grayscale_p"] = float(aug.grayscale.p)
    if aug.blur.enabled and aug.blur.p > 0:
        spec.update(blur_sigma=tuple(float(s) for s in aug.blur.sigma), blur_p=float(aug.blur.p),
                    blur_max_window=blur_kernel_size(aug.blur, int(data.image_size)))
    if aug.flip.enabled:
        spec["flip_p"] = float(aug.flip.p)
    return ViewSpec(**spec)


def view_specs(aug: "AugmentConfig", data: "DataConfig",
               spec: Optional[ViewSpec] = None) -> Tuple[ViewSpec, ...]:
    """One :class:`ViewSpec` per view of :func:`~hpt_hpc.data.specs.view_crops`, in order:
    the global views take ``spec`` (None: :func:`view_spec`; a changed one for
    comparisons), each local view the same augmentations with its own crop and blur
    window."""
    spec = spec or view_spec(aug, data)
    crops = view_crops(aug, data)
    return tuple(spec if crop == crops[0] else _local(spec, crop, aug) for crop in crops)


def _local(spec: ViewSpec, crop: ViewCrop, aug: "AugmentConfig") -> ViewSpec:
    window = blur_kernel_size(aug.blur, crop.size) if spec.blur_sigma is not None else 0
    return replace(spec, size=crop.size, crop=(crop.scale, crop.ratio), blur_max_window=window)


def train_view_spec(spec: EvalSpec) -> ViewSpec:
    """The training view of an :class:`~hpt_hpc.data.specs.EvalSpec`: random resized crop
    (its scale and ratio) and, when ``spec.flip``, a flip with probability 1/2."""
    return ViewSpec(size=spec.size, channels=spec.channels,
                    mean=tuple(255.0 * m for m in spec.mean),
                    std=tuple(255.0 * s for s in spec.std),
                    crop=(tuple(spec.crop_scale), tuple(spec.crop_ratio)),
                    flip_p=0.5 if spec.flip else 0.0)


def gpu_available() -> bool:
    import torch
    return torch.cuda.is_available()


def resolve_device(name: str) -> str:
    """``auto`` -> ``gpu`` when a CUDA GPU is visible, else ``cpu``; ``gpu`` without one
    fails with a message saying what to set instead."""
    if name not in DEVICES:
        raise HptError(f"data.device: '{name}' is not one of {', '.join(DEVICES)}")
    if name == "auto":
        return "gpu" if gpu_available() else "cpu"
    if name == "gpu" and not gpu_available():
        raise HptError("data.device 'gpu' was requested for the DALI backend but no CUDA GPU "
                       "is visible; use --set data.device=cpu (or auto)")
    return name


def _coin(p: float):
    return fn.random.coin_flip(probability=float(p), dtype=types.BOOL)


def _uniform(low: float, high: float):
    return fn.random.uniform(range=[float(low), float(high)])


def _decode(raw, channels: int, device: str):
    return fn.decoders.image(raw, device="mixed" if device == "gpu" else "cpu",
                             output_type=types.GRAY if channels == 1 else types.RGB,
                             adjust_orientation=False)  # PIL ignores EXIF orientation too


def _mean_luma(img, channels: int):
    means = fn.reductions.mean(img, axes=[0, 1])
    if means.device == "gpu":
        means = means.cpu()  # argument inputs live on the CPU
    if channels == 1:
        return means[0]
    return means[0] * LUMA[0] + means[1] * LUMA[1] + means[2] * LUMA[2]


def _colour(img, spec: ViewSpec):
    """Colour jitter (with p) then grayscale (with p); a view pays only for what it gets."""
    jitter = _coin(spec.jitter_p) if spec.jitter_p > 0 else None
    if jitter is not None and (spec.brightness or spec.contrast):
        if jitter:
            b, c = spec.brightness, spec.contrast
            img = fn.brightness_contrast(
                img, brightness=_uniform(max(0.0, 1 - b), 1 + b) if b else 1.0,
                contrast=_uniform(max(0.0, 1 - c), 1 + c) if c else 1.0,
                contrast_center=_mean_luma(img, spec.channels))
    twist_jitter = jitter is not None and (spec.saturation or spec.hue_degrees)
    if not twist_jitter and spec.grayscale_p <= 0:
        return img
    saturation, hue = 1.0, 0.0
    if twist_jitter:
        on, s, h = fn.cast(jitter, dtype=types.FLOAT), spec.saturation, spec.hue_degrees
        if s:
            saturation = on * _uniform(max(0.0, 1 - s), 1 + s) + (1.0 - on)
        if h:
            hue = on * _uniform(-h, h)
    if spec.grayscale_p > 0:
        grey = _coin(spec.grayscale_p)
        saturation = saturation * (1.0 - fn.cast(grey, dtype=types.FLOAT))
        apply = (jitter | grey) if twist_jitter else grey
    else:
        apply = jitter
    if apply:
        img = fn.color_twist(img, saturation=saturation, hue=hue)
    return img


def _blur(img, spec: ViewSpec):
    """Gaussian blur, sigma ~ U(range), window ``2*ceil(3 sigma)+1`` capped (or fixed).

    On the CPU as two 1-D ``fn.filter`` passes with a per-sample kernel, about ten times
    cheaper than the CPU ``gaussian_blur`` (same kernel and reflect-101 border; results
    within one grey level). On the GPU, ``gaussian_blur``.
    """
    sigma, cap = _uniform(*spec.blur_sigma), spec.blur_max_window // 2
    radius = cap
    if not spec.blur_fixed_window:
        radius = dmath.min(fn.cast(dmath.ceil(sigma * 3.0), dtype=types.INT32), cap)
    if img.device == "gpu" or not spec.blur_cpu_filter:
        return fn.gaussian_blur(img, sigma=sigma, window_size=radius * 2 + 1)
    offsets = types.Constant(np.arange(-cap, cap + 1, dtype=np.float32))
    kernel = dmath.exp(offsets * offsets * (-0.5 / (sigma * sigma)))
    if not spec.blur_fixed_window:
        kernel = fn.slice(kernel, start=cap - radius, shape=radius * 2 + 1, axes=[0])
    kernel = kernel / fn.reductions.sum(kernel)
    img = fn.filter(img, fn.reshape(kernel, shape=[1, -1]))
    return fn.filter(img, fn.reshape(kernel, shape=[-1, 1]))


def _view(images, spec: ViewSpec):
    """One random view: (H, W, C) uint8 -> (C, S, S) float, normalised."""
    size, crop = spec.size, None
    if spec.crop is not None:
        scale, ratio = spec.crop
        img = fn.random_resized_crop(images, size=(size, size), random_area=list(scale),
                                     random_aspect_ratio=list(ratio), num_attempts=10,
                                     antialias=True)
    else:
        img, crop = fn.resize(images, resize_shorter=size, antialias=True), (size, size)
    if spec.colour_in_dali and (spec.jitter_p > 0 or spec.grayscale_p > 0):
        img = _colour(img, spec)
    if spec.blur_sigma is not None:
        if _coin(spec.blur_p):
            img = _blur(img, spec)
    extra = {"crop": crop} if crop else {}
    if spec.flip_p > 0:
        extra["mirror"] = fn.random.coin_flip(probability=spec.flip_p)
    return fn.crop_mirror_normalize(img, mean=list(spec.mean), std=list(spec.std),
                                    dtype=types.FLOAT, output_layout="CHW", **extra)


def _source(feed):
    """``(encoded images, meta)``: from a Python feed, or from a reader of tar shards
    (an object with ``dali_outputs``: :mod:`hpt_hpc.data.dali_shards`)."""
    if hasattr(feed, "dali_outputs"):
        return feed.dali_outputs()
    return fn.external_source(source=feed, num_outputs=2, batch=True,
                              dtype=[types.UINT8, types.INT64])


@pipeline_def(enable_conditionals=True)
def multi_view_graph(feed, specs: Tuple[ViewSpec, ...], device: str):
    """(view 1, ..., view n, meta): one independent view per spec of each decoded image."""
    raw, meta = _source(feed)
    images = _decode(raw, specs[0].channels, device)
    return (*(_view(images, spec) for spec in specs), meta)


@pipeline_def(enable_conditionals=True)
def eval_graph(feed, spec: EvalSpec, device: str, random_view: bool):
    """(images, meta): the training view (``random_view``) or the test view of ``spec``:
    short side to ``round(S / center_crop_ratio)`` (to ``S`` when it is at most ``S``),
    centre crop ``S``."""
    raw, meta = _source(feed)
    images = _decode(raw, spec.channels, device)
    if random_view:
        return _view(images, train_view_spec(spec)), meta
    size, large = spec.size, spec.resize_large
    mean, std = [255.0 * m for m in spec.mean], [255.0 * s for s in spec.std]
    shape = images.shape(dtype=types.INT32, device="cpu")
    small = fn.cast(dmath.min(shape[0], shape[1]) <= size, dtype=types.FLOAT)
    img = fn.resize(images, resize_shorter=small * float(size - large) + float(large),
                    antialias=True)
    out = fn.crop_mirror_normalize(img, crop=(size, size), mean=mean, std=std,
                                   dtype=types.FLOAT, output_layout="CHW")
    return out, meta


def pipeline_kwargs(batch_size: int, threads: int, device: str, seed: int,
                    prefetch: int = 2) -> dict:
    """Pipeline arguments: CPU pipelines have no device (``device_id=None``); GPU ones use
    torch's current CUDA device (the rank's)."""
    device_id = None
    if device == "gpu":
        import torch
        device_id = torch.cuda.current_device()
    return dict(batch_size=int(batch_size), num_threads=max(1, int(threads)),
                device_id=device_id, seed=int(seed) % (2 ** 31 - 1),
                prefetch_queue_depth=int(prefetch))
