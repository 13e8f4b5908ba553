"""Backend-neutral transform specs (pure Python: no torch, torchvision or DALI).

The torchvision transforms (:mod:`hpt_hpc.data.transforms`), the DALI graphs
(:mod:`hpt_hpc.data.dali_pipelines`) and the probe / fine-tune code all build their
evaluation transforms from one :class:`EvalSpec`, and both backends' pretraining views
from one tuple of :class:`ViewCrop` (:func:`view_crops`: multi-crop), so the backends and
protocols cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from ..config.schema import DataConfig, ProbeConfig
from ..errors import HptError

if TYPE_CHECKING:  # pragma: no cover
    from hpt_hpc.config.schema import AugmentConfig, BlurConfig

INTERPOLATION = "bilinear"  # the test view's resize (PIL, torchvision's Resize default)
GLOBAL_VIEWS = 2  # the first views of every pretraining batch; local views follow


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


@dataclass(frozen=True)
class ViewCrop:
    """The crop of one pretraining view: side ``size``; random resized crop of area
    ``scale`` and aspect ``ratio``, or (``scale`` None) short side to ``size`` and centre
    crop."""

    size: int
    scale: Optional[Tuple[float, float]]
    ratio: Tuple[float, float]


def local_crop_size(aug: "AugmentConfig", data: "DataConfig") -> int:
    """``augment.local_crops.size``, or (null) ``round(3/7 data.image_size)``: 96 at 224."""
    size = aug.local_crops.size
    return int(size) if size is not None else max(1, int(round(data.image_size * 3 / 7)))


def view_crops(aug: "AugmentConfig", data: "DataConfig") -> Tuple[ViewCrop, ...]:
    """The crops of the pretraining views, in the order both backends yield the views:
    :data:`GLOBAL_VIEWS` global (``data.image_size``, ``augment.crop``), then
    ``augment.local_crops.number`` local ones (their own size and area, always random,
    aspect ``augment.crop.ratio``)."""
    ratio = tuple(aug.crop.ratio)
    scale = tuple(aug.crop.scale) if aug.crop.enabled else None
    global_view = ViewCrop(int(data.image_size), scale, ratio)
    local = ViewCrop(local_crop_size(aug, data), tuple(aug.local_crops.scale), ratio)
    return (global_view,) * GLOBAL_VIEWS + (local,) * int(aug.local_crops.number)


@dataclass(frozen=True)
class EvalSpec:
    """The evaluation transforms of every backend (``mean``/``std`` on the 0..1 scale).

    * Test view (val/test images, cached-mode features): resize the short side to
      ``round(size / center_crop_ratio)`` - or to ``size`` when the image's short side is
      already at most ``size`` (small images are not blown up past the crop) - then
      centre-crop ``size``. The default ratio 0.875 is the ImageNet 256/224 rule.
    * Training view (probe training, fine-tuning with ``augment``): random resized crop
      to ``size`` with area ``crop_scale`` and aspect ``crop_ratio``, then a horizontal
      flip with probability 1/2 when ``flip``.
    """

    size: int
    channels: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    center_crop_ratio: float
    crop_scale: Tuple[float, float]
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True

    @property
    def resize_large(self) -> int:
        """Short side of the test view's resize for images larger than ``size``."""
        return int(round(self.size / self.center_crop_ratio))

    def resize_shorter(self, short_side: int) -> int:
        """The test view's target short side for an image whose short side is given."""
        return self.size if short_side <= self.size else self.resize_large

    def preprocessing(self) -> Dict[str, Any]:
        """The test view as plain values, what an export file carries: an image is
        converted to ``channels`` (1: grey, 3: RGB), its short side resized
        (``interpolation``) to ``resize`` - or to ``input_size`` when it is at most
        ``input_size`` -, centre-cropped to ``input_size``, scaled to 0..1 and normalised
        with ``mean``/``std``."""
        return {"input_size": self.size, "resize": self.resize_large,
                "center_crop_ratio": self.center_crop_ratio, "channels": self.channels,
                "mean": list(self.mean), "std": list(self.std),
                "interpolation": INTERPOLATION}


def eval_spec(data: "DataConfig", probe: Optional["ProbeConfig"] = None) -> EvalSpec:
    """The :class:`EvalSpec` of a config (``probe`` None: :class:`ProbeConfig` defaults);
    an invalid ``probe.crop_scale`` or ``probe.center_crop_ratio`` is an :class:`HptError`."""
    if probe is None:
        probe = ProbeConfig()
    scale = tuple(float(s) for s in probe.crop_scale)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise HptError(f"probe.crop_scale must be [low, high] with 0 < low <= high <= 1, "
                       f"got {list(probe.crop_scale)}")
    ratio = float(probe.center_crop_ratio)
    if not 0 < ratio <= 1:
        raise HptError(f"probe.center_crop_ratio must be in (0, 1], got {ratio}")
    mean, std = normalisation(data)
    return EvalSpec(size=int(data.image_size), channels=int(data.channels), mean=tuple(mean),
                    std=tuple(std), center_crop_ratio=ratio, crop_scale=scale,
                    flip=bool(probe.flip))


def preprocessing_configs(values: Dict[str, Any]) -> Tuple[DataConfig, ProbeConfig]:
    """The data and probe settings whose test view is :meth:`EvalSpec.preprocessing`'s
    ``values`` (read back from an export file; bad values are an :class:`HptError`)."""
    try:
        data = DataConfig(image_size=int(values["input_size"]),
                          channels=int(values["channels"]),
                          mean=[float(v) for v in values["mean"]],
                          std=[float(v) for v in values["std"]], workers=0)
        probe = ProbeConfig(center_crop_ratio=float(values["center_crop_ratio"]))
        if data.image_size < 1 or data.channels < 1:
            raise ValueError("input_size and channels must be positive")
        if values.get("interpolation", INTERPOLATION) != INTERPOLATION:
            raise ValueError(f"interpolation {values['interpolation']!r} (only "
                             f"{INTERPOLATION!r} is implemented)")
        spec = eval_spec(data, probe)
    except (KeyError, TypeError, ValueError) as exc:
        raise HptError(f"preprocessing {values!r} is not usable: {exc}") from None
    if spec.resize_large != values.get("resize", spec.resize_large):
        raise HptError(f"preprocessing {values!r} is inconsistent: resize "
                       f"{values['resize']} is not input_size / center_crop_ratio")
    return data, probe
