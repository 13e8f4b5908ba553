"""MoCo-v2 two-view augmentation and evaluation transforms (torchvision v1 API, PIL input).

Order per view, all on the PIL image: crop -> colour jitter -> random grey -> flip -> blur,
then one numpy pass to a normalised tensor. Blur commutes with the flip, so this is
MoCo-v2's pipeline. Every piece is built only when enabled in the config.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Tuple

import numpy as np
import torch
from PIL import ImageFilter
from torchvision import transforms as T

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, BlurConfig, DataConfig

EVAL_RESIZE_RATIO = 256 / 224  # resize-then-centre-crop ratio of the ImageNet protocol


def blur_kernel_size(blur: "BlurConfig", image_size: int) -> int:
    """The configured kernel, or an odd size near 10% of the image side (at least 3)."""
    if blur.kernel_size is not None:
        k = int(blur.kernel_size)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"augment.blur.kernel_size must be a positive odd integer, got {k}")
        return k
    k = int(round(0.1 * image_size))
    return max(3, k if k % 2 == 1 else k + 1)


def normalisation(data: "DataConfig") -> Tuple[List[float], List[float]]:
    """Mean/std with one value per channel.

    A single value is repeated; three values with ``channels: 1`` are averaged (so the
    ImageNet defaults still work for grey images); any other mismatch is an error.
    """
    stats = []
    for name, values in (("mean", list(data.mean)), ("std", list(data.std))):
        if len(values) == 1:
            values = values * data.channels
        elif data.channels == 1 and len(values) == 3:
            values = [sum(values) / 3.0]
        if len(values) != data.channels:
            raise ValueError(f"data.{name} has {len(values)} values but data.channels is "
                             f"{data.channels}")
        stats.append([float(v) for v in values])
    if any(s <= 0 for s in stats[1]):
        raise ValueError(f"data.std must be positive, got {data.std}")
    return stats[0], stats[1]


class ToNormalizedTensor:
    """PIL image -> float tensor (C, H, W) equal to ``ToTensor`` then ``Normalize``, in one
    numpy pass (several times cheaper on small images)."""

    def __init__(self, mean: List[float], std: List[float]):
        std_arr = np.asarray(std, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std_arr)).reshape(-1, 1, 1)
        self.shift = (np.asarray(mean, dtype=np.float32) / std_arr).reshape(-1, 1, 1)

    def __call__(self, img) -> torch.Tensor:
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
        return img.filter(ImageFilter.GaussianBlur(radius=sigma))

    def __repr__(self) -> str:
        return f"RandomGaussianBlur(sigma={self.sigma}, p={self.p})"


def _tensor_tail(data: "DataConfig") -> List:
    mean, std = normalisation(data)
    return [ToNormalizedTensor(mean, std)]


def build_view_transform(aug: "AugmentConfig", data: "DataConfig") -> T.Compose:
    """One random MoCo-v2 view: PIL image -> normalised float tensor (C, S, S)."""
    size = int(data.image_size)
    pil: List = []
    if aug.crop.enabled:
        pil.append(T.RandomResizedCrop(size, scale=tuple(aug.crop.scale),
                                       ratio=tuple(aug.crop.ratio)))
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


class TwoViewTransform:
    """Apply the same random view transform twice: image -> (view1, view2)."""

    def __init__(self, view: T.Compose):
        self.view = view

    def __call__(self, img) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.view(img), self.view(img)

    def __repr__(self) -> str:
        return f"TwoViewTransform({self.view!r})"


def build_two_view_transform(aug: "AugmentConfig", data: "DataConfig") -> TwoViewTransform:
    """MoCo-v2 query/key augmentation: PIL image -> (view1, view2) float tensors."""
    return TwoViewTransform(build_view_transform(aug, data))


class EvalResize:
    """Resize the short side to ``size * 256/224`` (rounded), or to ``size`` when the image's
    short side is already at most ``size``, then centre-crop ``size``."""

    def __init__(self, size: int):
        self.size = int(size)
        self.large = T.Compose([T.Resize(int(round(self.size * EVAL_RESIZE_RATIO))),
                                T.CenterCrop(self.size)])
        self.small = T.Compose([T.Resize(self.size), T.CenterCrop(self.size)])

    def __call__(self, img):
        return (self.small if min(img.size) <= self.size else self.large)(img)

    def __repr__(self) -> str:
        return f"EvalResize(size={self.size})"


def build_eval_transform(data: "DataConfig") -> T.Compose:
    """Deterministic evaluation transform: resize, centre crop, tensor, normalise."""
    return T.Compose([EvalResize(data.image_size), *_tensor_tail(data)])


def build_probe_train_transform(data: "DataConfig") -> T.Compose:
    """Linear-probe training transform: random resized crop and horizontal flip."""
    return T.Compose([T.RandomResizedCrop(int(data.image_size)), T.RandomHorizontalFlip(),
                      *_tensor_tail(data)])
