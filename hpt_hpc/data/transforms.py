"""Pretraining (MoCo-v2 per view, multi-crop) and evaluation transforms (torchvision v1
API, PIL input; multi-band images come as float tensors, see :mod:`hpt_hpc.data.bands`, and
take the same crop, flip and blur; colour jitter and random grey need 1 or 3 channels).

Order per view, all on the PIL image: crop (the view's own
:class:`~hpt_hpc.data.specs.ViewCrop`) -> colour jitter -> random grey -> flip -> blur,
then one numpy pass to a normalised tensor. Blur commutes with the flip, so this is
MoCo-v2's pipeline. Every piece is built only when enabled in the config. The evaluation
transforms are the torchvision form of :class:`~hpt_hpc.data.specs.EvalSpec`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as TF

from .specs import EvalSpec, ViewCrop, blur_kernel_size, eval_spec, normalisation, view_crops

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, DataConfig, ProbeConfig

__all__ = ["EvalResize", "MultiCropTransform", "RandomGaussianBlur", "ToNormalizedTensor",
           "blur_kernel_size", "build_eval_transform", "build_pretrain_transform",
           "build_probe_train_transform", "build_view_transform", "normalisation"]


class ToNormalizedTensor:
    """PIL image -> float tensor (C, H, W) equal to ``ToTensor`` then ``Normalize``, in one
    numpy pass (several times cheaper on small images)."""

    def __init__(self, mean: List[float], std: List[float]):
        std_arr = np.asarray(std, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std_arr)).reshape(-1, 1, 1)
        self.shift = (np.asarray(mean, dtype=np.float32) / std_arr).reshape(-1, 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).reshape(-1, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        if isinstance(img, torch.Tensor):  # bands (C, H, W), already scaled to their range
            return (img.float() - self.mean) / self.std
        arr = np.asarray(img, dtype=np.float32)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr * self.scale - self.shift))

    def __repr__(self) -> str:
        return "ToNormalizedTensor()"


class RandomGaussianBlur:
    """With probability ``p``, blur a PIL image with sigma ~ U(sigma_min, sigma_max).

    PIL's Gaussian blur, as in the original MoCo-v2 code; its extent follows sigma (about
    3 sigma), so ``blur.kernel_size`` does not apply to this backend. Random draws come
    from torch's generator, like the torchvision transforms around it.
    """

    def __init__(self, sigma: Tuple[float, float], p: float):
        self.sigma, self.p = (float(sigma[0]), float(sigma[1])), float(p)

    def __call__(self, img):
        if float(torch.rand(1)) >= self.p:
            return img
        low, high = self.sigma
        sigma = low + (high - low) * float(torch.rand(1))
        if isinstance(img, torch.Tensor):  # bands: the same ~3 sigma extent as PIL's
            kernel = 2 * max(1, int(math.ceil(3 * sigma))) + 1
            return TF.gaussian_blur(img, [kernel, kernel], [sigma, sigma])
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma={self.sigma}, p={self.p})"


def _tensor_tail(data: "DataConfig") -> List:
    mean, std = normalisation(data)
    return [ToNormalizedTensor(mean, std)]


def build_view_transform(aug: "AugmentConfig", data: "DataConfig",
                         crop: Optional[ViewCrop] = None) -> T.Compose:
    """One random MoCo-v2 view with ``crop`` (None: the global view's): PIL image ->
    normalised float tensor (C, S, S)."""
    crop = crop or view_crops(aug, data)[0]
    size = crop.size
    pil: List = []
    if crop.scale is not None:
        pil.append(T.RandomResizedCrop(size, scale=crop.scale, ratio=crop.ratio))
    else:
        pil += [T.Resize(size), T.CenterCrop(size)]
    cj = aug.color_jitter
    if cj.enabled and cj.p > 0:
        colour = data.channels == 3
        jitter = T.ColorJitter(brightness=cj.brightness, contrast=cj.contrast,
                               saturation=cj.saturation if colour else 0,
                               hue=cj.hue if colour else 0)
        if any(v is not None for v in (jitter.brightness, jitter.contrast, jitter.saturation,
                                       jitter.hue)):
            pil.append(T.RandomApply([jitter], p=cj.p))
    if aug.grayscale.enabled and aug.grayscale.p > 0 and data.channels == 3:
        pil.append(T.RandomGrayscale(p=aug.grayscale.p))
    if aug.flip.enabled and aug.flip.p > 0:
        pil.append(T.RandomHorizontalFlip(p=aug.flip.p))
    if aug.blur.enabled and aug.blur.p > 0:
        blur_kernel_size(aug.blur, size)  # validates a configured kernel size
        pil.append(RandomGaussianBlur(tuple(aug.blur.sigma), aug.blur.p))
    return T.Compose(pil + _tensor_tail(data))


class MultiCropTransform:
    """Each view transform once, in order: image -> (global 1, global 2, local 1, ...)."""

    def __init__(self, views: Sequence[T.Compose]):
        self.views = tuple(views)

    def __call__(self, img) -> Tuple[torch.Tensor, ...]:
        return tuple(view(img) for view in self.views)

    def __repr__(self) -> str:
        return f"MultiCropTransform({list(self.views)!r})"


def build_pretrain_transform(aug: "AugmentConfig", data: "DataConfig") -> MultiCropTransform:
    """The pretraining views of :func:`~hpt_hpc.data.specs.view_crops`: PIL image -> 2
    global + ``augment.local_crops.number`` local float tensors (one transform per kind of
    crop: with no local crops the same draws as one MoCo-v2 view transform applied twice)."""
    crops = view_crops(aug, data)
    built = {crop: build_view_transform(aug, data, crop) for crop in set(crops)}
    return MultiCropTransform([built[crop] for crop in crops])


class EvalResize:
    """The test view's resize and centre crop of an :class:`~hpt_hpc.data.specs.EvalSpec`
    (short side to ``round(size / center_crop_ratio)``, or to ``size`` for an image whose
    short side is at most ``size``), on a PIL image."""

    def __init__(self, spec: EvalSpec):
        self.size, self.large = spec.size, spec.resize_large
        self.large_crop = T.Compose([T.Resize(self.large), T.CenterCrop(self.size)])
        self.small_crop = T.Compose([T.Resize(self.size), T.CenterCrop(self.size)])

    def __call__(self, img):
        shape = img.shape[-2:] if isinstance(img, torch.Tensor) else img.size
        return (self.small_crop if min(shape) <= self.size else self.large_crop)(img)

    def __repr__(self) -> str:
        return f"EvalResize(size={self.size}, large={self.large})"


def build_eval_transform(data: "DataConfig", probe: Optional["ProbeConfig"] = None
                         ) -> T.Compose:
    """The test view of :func:`~hpt_hpc.data.specs.eval_spec`: resize, centre crop,
    normalised tensor (``probe`` None: default ``center_crop_ratio``)."""
    spec = eval_spec(data, probe)
    return T.Compose([EvalResize(spec), ToNormalizedTensor(spec.mean, spec.std)])


def build_probe_train_transform(data: "DataConfig", probe: Optional["ProbeConfig"] = None,
                                augment: bool = True) -> T.Compose:
    """The training view of :func:`~hpt_hpc.data.specs.eval_spec` (random resized crop with
    ``probe.crop_scale``, flip when ``probe.flip``); the test view when ``augment`` is off."""
    if not augment:
        return build_eval_transform(data, probe)
    spec = eval_spec(data, probe)
    steps = [T.RandomResizedCrop(spec.size, scale=spec.crop_scale, ratio=spec.crop_ratio)]
    if spec.flip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose(steps + [ToNormalizedTensor(spec.mean, spec.std)])
