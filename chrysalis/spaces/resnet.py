"""ResNet-20 for CIFAR (He et al. 2016, section 4.2).

    (B, 3, 32, 32) -> conv 3x3 3->16, BN, ReLU
      -> stage 1: 3 basic blocks, 16 channels, 32x32
      -> stage 2: 3 basic blocks, 32 channels, 16x16 (first block stride 2)
      -> stage 3: 3 basic blocks, 64 channels, 8x8   (first block stride 2)
      -> global average pool -> linear classes

A basic block is conv 3x3 - BN - ReLU - conv 3x3 - BN, plus the shortcut, then ReLU. The
shortcut is option A by default, as in the paper's CIFAR experiments: the identity, subsampled
by taking every other pixel and zero-padded with the extra channels when the shape changes (no
parameters, so every conv of the network is a 3x3 conv that a K-op can replace). Option B uses a
1x1 strided conv + BN when the shape changes. `blocks_per_stage` n gives ResNet-(6n+2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._info import image_shape


class ShortcutA(nn.Module):
    """Parameter-free shortcut: (B, C, H, W) -> (B, C_out, H/s, W/s) by subsampling + zero channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride, self.extra = stride, out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # (B, C, H/s, W/s)
        if self.extra:
            lo = self.extra // 2
            x = nn.functional.pad(x, (0, 0, 0, 0, lo, self.extra - lo))  # (B, C_out, H/s, W/s)
        return x


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU: (B, C, H, W) -> (B, C_out, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_channels, out_channels, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))  # (B, C_out, H/s, W/s)
        y = self.bn2(self.conv2(y))  # (B, C_out, H/s, W/s)
        return self.act(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images; n = 3 (default) is ResNet-20.

    Args:
        in_channels: image channels (3).
        num_classes: outputs.
        blocks_per_stage: n, basic blocks per stage (3).
        widths: channels of the three stages (16, 32, 64).
        shortcut: "A" (identity + zero padding, the paper's CIFAR choice) or "B" (1x1 conv + BN).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        *,
        blocks_per_stage: int = 3,
        widths: tuple[int, int, int] = (16, 32, 64),
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)  # -> (B, 16, H, W)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = nn.ReLU()
        stages = []
        c = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(c, w, stride, shortcut))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages  # 16xHxW, 32x(H/2)x(W/2), 64x(H/4)x(W/4)
        self.pool = nn.AdaptiveAvgPool2d(1)  # -> (B, 64, 1, 1)
        self.fc = nn.Linear(c, num_classes)  # (B, 64) -> (B, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, 64, H/4, W/4)
        return self.fc(self.pool(x).flatten(1))  # (B, classes)


def build_resnet20(info: Any, **options: Any) -> CifarResNet:
    """ResNet-20 for an image dataset's `info`; `options` go to `CifarResNet` (shortcut, widths ...)."""
    c, _, _ = image_shape(info, "resnet20")
    return CifarResNet(c, int(info.num_classes), **options)
