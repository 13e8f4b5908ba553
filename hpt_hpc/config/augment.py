"""The augmentation sections of the config (``augment:``): MoCo-v2's view augmentations,
each switchable, and the local crops of multi-crop methods."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from .keys import key


@dataclass
class CropConfig:
    """RandomResizedCrop of both views."""

    enabled: bool = key(True, "random crop at all (false: resize and centre-crop to "
                              "image_size)")
    scale: List[float] = key(doc="[low, high] fraction of the image area kept",
                             factory=lambda: [0.2, 1.0])
    ratio: List[float] = key(doc="[low, high] aspect ratio of the crop",
                             factory=lambda: [3 / 4, 4 / 3])


@dataclass
class ColorJitterConfig:
    """Colour jitter (grey images: brightness and contrast only; N bands: refused)."""

    enabled: bool = key(True, "jitter colours at all")
    brightness: float = key(0.4, "brightness factor drawn from [1 - b, 1 + b]")
    contrast: float = key(0.4, "contrast factor drawn from [1 - c, 1 + c]")
    saturation: float = key(0.4, "saturation factor drawn from [1 - s, 1 + s]")
    hue: float = key(0.1, "hue shift drawn from [-h, h] (fraction of the colour circle)")
    p: float = key(0.8, "probability that a view is jittered")


@dataclass
class GrayscaleConfig:
    """Random conversion to grey (RGB images only)."""

    enabled: bool = key(True, "random grey at all")
    p: float = key(0.2, "probability that a view turns grey")


@dataclass
class BlurConfig:
    """Gaussian blur of MoCo-v2."""

    enabled: bool = key(True, "blur at all")
    sigma: List[float] = key(doc="[low, high] range of the blur's sigma in pixels",
                             factory=lambda: [0.1, 2.0])
    kernel_size: Optional[int] = key(None, "DALI's kernel size (odd); null: about 10% of the "
                                           "image side")
    p: float = key(0.5, "probability that a view is blurred")


@dataclass
class FlipConfig:
    """Random horizontal flip."""

    enabled: bool = key(True, "flip at all")
    p: float = key(0.5, "probability that a view is flipped")


@dataclass
class LocalCropsConfig:
    """Multi-crop (DINO): small random resized crops (aspect crop.ratio), augmented alike."""

    number: int = key(0, "local views per image (0: the two global views only)")
    size: Optional[int] = key(None, "side of the local views in pixels, at most "
                                    "data.image_size (null: round(3/7 image_size), 96 at 224)")
    scale: List[float] = key(doc="[low, high] fraction of the image area a local view keeps "
                                 "(within (0, 1])", factory=lambda: [0.05, 0.4])


@dataclass
class AugmentConfig:
    """MoCo-v2's augmentations, each switchable (the paper's robustness study drops them)."""

    crop: CropConfig = key(doc="random resized crop", factory=CropConfig)
    color_jitter: ColorJitterConfig = key(doc="colour jitter", factory=ColorJitterConfig)
    grayscale: GrayscaleConfig = key(doc="random grey", factory=GrayscaleConfig)
    blur: BlurConfig = key(doc="Gaussian blur", factory=BlurConfig)
    flip: FlipConfig = key(doc="horizontal flip", factory=FlipConfig)
    local_crops: LocalCropsConfig = key(doc="multi-crop (DINO)", factory=LocalCropsConfig)
