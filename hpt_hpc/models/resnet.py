"""Width-scalable torchvision ResNets whose state_dict keys match torchvision's exactly.

The network reuses torchvision's ``BasicBlock``/``Bottleneck`` and ``ResNet._make_layer``,
so a width-1, standard-stem, 3-channel model loads strictly into
``torchvision.models.resnet18()`` / ``resnet50()`` (and vice versa, minus the classifier).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

ARCHS = {
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
}
BASE_WIDTHS = (64, 128, 256, 512)
MIN_STAGE_WIDTH = 8


def stage_widths(width: float) -> list[int]:
    """The four stage widths ``round(64 * width)`` ... ``round(512 * width)``, each >= 8."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return [max(MIN_STAGE_WIDTH, int(round(w * width))) for w in BASE_WIDTHS]


class ResNetBackbone(tv_resnet.ResNet):
    """A torchvision ``ResNet`` with scaled stage widths and an optional small-image stem.

    ``fc`` is ``nn.Identity`` when ``num_classes == 0`` so ``forward`` returns pooled features
    of size ``feature_dim``. Weight initialisation follows torchvision (Kaiming conv, BN 1/0).
    """

    def __init__(self, arch: str = "resnet18", width: float = 1.0, small_stem: bool = False,
                 in_channels: int = 3, num_classes: int = 0, stem_stride: int = 1) -> None:
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        # Deliberately skip ResNet.__init__ (it hard-codes 64-wide, 3-channel layers) but set
        # every attribute that ResNet._make_layer reads.
        nn.Module.__init__(self)
        block, layers = ARCHS[arch]
        widths = stage_widths(width)
        self.arch, self.width, self.small_stem = arch, float(width), bool(small_stem)
        self.in_channels, self.stem_stride = int(in_channels), int(stem_stride)
        self.stage_widths = widths
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # Bottleneck inner width = planes * base_width / 64 = planes

        if small_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=stem_stride, padding=1,
                                   bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if small_stem else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.feature_dim = widths[3] * block.expansion
        self.fc = nn.Linear(self.feature_dim, num_classes) if num_classes > 0 else nn.Identity()

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, flattened backbone features (everything but ``fc``)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def extra_repr(self) -> str:
        return (f"arch={self.arch}, width={self.width}, small_stem={self.small_stem}, "
                f"in_channels={self.in_channels}, feature_dim={self.feature_dim}")


def build_resnet(arch: str = "resnet18", width: float = 1.0, small_stem: bool = False,
                 in_channels: int = 3, num_classes: int = 0, stem_stride: int = 1,
                 ) -> ResNetBackbone:
    """Build a torchvision-compatible ResNet (see :class:`ResNetBackbone`); ``stem_stride``
    applies to the small stem only."""
    return ResNetBackbone(arch, width, small_stem, in_channels, num_classes, stem_stride)


def build_backbone_from_config(model_cfg, num_classes: int = 0) -> ResNetBackbone:
    """:func:`build_resnet` from a :class:`hpt_hpc.config.schema.ModelConfig`."""
    return build_resnet(model_cfg.arch, model_cfg.width, model_cfg.small_stem,
                        model_cfg.in_channels, num_classes, model_cfg.stem_stride)


def feature_dim_for(arch: str, width: float = 1.0) -> int:
    """Backbone output width without building the model."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {sorted(ARCHS)}")
    return stage_widths(width)[3] * ARCHS[arch][0].expansion


def describe_arch(arch: str, width: float, small_stem: bool, in_channels: int,
                  feature_dim: Optional[int] = None) -> str:
    """Human-readable architecture summary used in error messages."""
    fd = feature_dim if feature_dim is not None else feature_dim_for(arch, width)
    return (f"{arch} (width={width:g}, small_stem={small_stem}, in_channels={in_channels}, "
            f"stage widths={stage_widths(width)}, feature_dim={fd})")
