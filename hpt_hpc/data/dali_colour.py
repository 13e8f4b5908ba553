"""Colour jitter and random grayscale of the DALI views as one affine colour map per view.

Brightness ``b``, contrast ``c`` (pivot: the view's mean luma ``m``, as torchvision's),
saturation ``s`` and hue ``h`` are all linear in RGB (hue as a rotation of the YIQ chroma
plane, as DALI's ``color_twist``; grayscale is ``s = 0``, an exact ITU-R 601 luma), so a
view's whole colour augmentation is ``y = b c HS(s, h) x + b (1 - c) m``, clipped to the
valid range once. Without clipping this equals torchvision's chain in any of its random
orders; it commutes with the flip and, up to clipping, with the blur DALI applies first.

Applied by torch to DALI's normalised output batch (on its device) with one batched
matrix product: DALI's CPU colour operators (``color_twist``, ``hsv``, ``coord_transform``)
cost about 1.1 ms per 224x224 view, more than the crop; this costs a few per cent of that.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322],
                           [0.211, -0.523, 0.312]], dtype=torch.float64)
YIQ_TO_RGB = torch.linalg.inv(RGB_TO_YIQ)


class ColourStage:
    """Random colour jitter (with ``jitter_p``) and grayscale (with ``grayscale_p``) of
    normalised views ``(B, C, S, S)``; draws from its own seeded generator (a fixed number
    of draws per batch, so a stream is reproducible from the seed)."""

    def __init__(self, spec, mean: Sequence[float], std: Sequence[float], seed: int):
        self.spec = spec
        self.mean = torch.tensor(mean, dtype=torch.float64)  # 0..1 units
        self.std = torch.tensor(std, dtype=torch.float64)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def active(self) -> bool:
        return self.spec.jitter_p > 0 or self.spec.grayscale_p > 0

    def _uniform(self, n: int, spread: float, centre: float = 1.0) -> torch.Tensor:
        low, high = max(0.0, centre - spread), centre + spread
        return low + (high - low) * torch.rand(n, generator=self.generator,
                                               dtype=torch.float64)

    def maps(self, n: int, channels: int):
        """(matrices (n, C, C), offset scales (n,)): ``y = M x + k * mean_luma(x)``."""
        spec, coin = self.spec, lambda p: torch.rand(n, generator=self.generator) < p
        jitter = coin(spec.jitter_p)
        ones = torch.ones(n, dtype=torch.float64)
        bright = torch.where(jitter, self._uniform(n, spec.brightness), ones)
        contrast = torch.where(jitter, self._uniform(n, spec.contrast), ones)
        if channels == 1:
            return (bright * contrast).view(n, 1, 1), bright * (1 - contrast)
        saturation = torch.where(jitter, self._uniform(n, spec.saturation), ones)
        hue = spec.hue_degrees * (2 * torch.rand(n, generator=self.generator,
                                                 dtype=torch.float64) - 1)
        hue = torch.where(jitter, hue, 0 * ones)
        saturation = torch.where(coin(spec.grayscale_p), 0 * ones, saturation)
        angle = hue * (math.pi / 180)
        chroma = torch.zeros(n, 3, 3, dtype=torch.float64)
        chroma[:, 0, 0] = 1
        chroma[:, 1, 1] = chroma[:, 2, 2] = saturation * torch.cos(angle)
        chroma[:, 1, 2] = -saturation * torch.sin(angle)
        chroma[:, 2, 1] = saturation * torch.sin(angle)
        matrices = YIQ_TO_RGB @ chroma @ RGB_TO_YIQ
        return (bright * contrast).view(n, 1, 1) * matrices, bright * (1 - contrast)

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        n, channels = views.shape[:2]
        matrices, offset = self.maps(n, channels)
        luma = RGB_TO_YIQ[0] if channels == 3 else torch.ones(1, dtype=torch.float64)
        means = views.mean(dim=(2, 3)).double().cpu() * self.std + self.mean  # (n, C)
        shift = (offset * (means @ luma))[:, None]  # (n, 1): added to every channel
        # in normalised units: x = std * xn + mean, yn = (y - mean) / std
        scaled = matrices * self.std[None, None, :] / self.std[None, :, None]
        bias = ((matrices @ self.mean) + shift - self.mean) / self.std
        flat = views.flatten(2)
        out = torch.baddbmm(bias.to(flat)[:, :, None], scaled.to(flat), flat)
        low, high = (-self.mean / self.std).to(flat), ((1 - self.mean) / self.std).to(flat)
        return out.clamp_(min=low[:, None], max=high[:, None]).view_as(views)
