"""LeNet (the *ButterfLeNet* backbone when its convs become K-ops).

    conv 5x5 C->6, ReLU, maxpool 2, conv 5x5 6->16, ReLU, maxpool 2, FC 120, ReLU, FC 84, ReLU, FC classes

The paper uses 3x32x32 images; any channel count and spatial size works, the flatten size is
computed from the input shape (28x28 -> 16x4x4, 32x32 -> 16x5x5). Small images (e.g. 8x8 digits)
need `padding=2` ("same" 5x5 convs).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ._info import image_shape


def _lenet_sizes(h: int, w: int, padding: int) -> tuple[int, int]:
    """Spatial size after conv5 -> pool2 -> conv5 -> pool2."""
    for _ in range(2):
        h, w = (h + 2 * padding - 4) // 2, (w + 2 * padding - 4) // 2
    return h, w


class LeNet(nn.Module):
    """LeNet-5 style CNN for `in_channels` x `input_size` images.

    Args:
        in_channels: image channels C.
        num_classes: outputs.
        input_size: (H, W) of the images; sets the flatten size.
        channels: output channels of the two convs (paper: 6, 16).
        hidden: widths of the two hidden FC layers (paper: 120, 84).
        padding: zero padding of both convs (0 as in the paper; 2 keeps the size).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        input_size: tuple[int, int] = (32, 32),
        *,
        channels: tuple[int, int] = (6, 16),
        hidden: tuple[int, int] = (120, 84),
        padding: int = 0,
    ) -> None:
        super().__init__()
        h, w = _lenet_sizes(*input_size, padding)
        if h < 1 or w < 1:
            raise ValueError(
                f"LeNet needs images of at least 14x14 with padding=0 (got {tuple(input_size)}); "
                "pass padding=2 for small images"
            )
        c1, c2 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, 5, padding=padding)  # (B, C, H, W) -> (B, 6, H-4, W-4)
        self.pool1 = nn.MaxPool2d(2)  # -> (B, 6, (H-4)/2, (W-4)/2)
        self.conv2 = nn.Conv2d(c1, c2, 5, padding=padding)  # -> (B, 16, (H-4)/2-4, ...)
        self.pool2 = nn.MaxPool2d(2)  # -> (B, 16, h, w)
        self.fc1 = nn.Linear(c2 * h * w, hidden[0])  # (B, 16*h*w) -> (B, 120)
        self.fc2 = nn.Linear(hidden[0], hidden[1])  # -> (B, 84)
        self.fc3 = nn.Linear(hidden[1], num_classes)  # -> (B, classes)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.act(self.conv1(x)))  # (B, 6, ., .)
        x = self.pool2(self.act(self.conv2(x)))  # (B, 16, h, w)
        x = x.flatten(1)  # (B, 16*h*w)
        x = self.act(self.fc1(x))  # (B, 120)
        x = self.act(self.fc2(x))  # (B, 84)
        return self.fc3(x)  # (B, classes)


def build_lenet(info: Any, **options: Any) -> LeNet:
    """LeNet for an image dataset's `info`; `options` go to `LeNet` (channels, hidden, padding)."""
    c, h, w = image_shape(info, "lenet")
    return LeNet(c, int(info.num_classes), (h, w), **options)
