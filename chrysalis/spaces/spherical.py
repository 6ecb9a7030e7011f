"""A planar CNN over the equiangular sphere grid (the spherical search space).

In the spirit of the planar baseline of Cohen et al. (2018, "Spherical CNNs") for spherical
MNIST: two strided 5x5 convs and one linear layer, on the (latitude, longitude) grid as if it
were an ordinary image:

    (B, C, 60, 60) -> conv 5x5 C->32 stride 3 -> ReLU -> (B, 32, 20, 20)
                   -> conv 5x5 32->64 stride 3 -> ReLU -> (B, 64, 7, 7) -> linear classes

Padding: the last axis is the longitude (alpha), which is periodic, so each conv sees its input
padded *circularly* by 2 along the longitude and with zeros by 2 along the latitude (beta; the
poles do not wrap). `nn.Conv2d(padding_mode="circular")` would wrap both axes, so the circular
longitude padding is a separate `LongitudePad` module before each conv (whose own padding is
zeros along the latitude only); a K-op that replaces the conv is built for the padded size.
`longitude_padding=False` gives plain unpadded convs (60 -> 19 -> 5), as in the baseline.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._info import image_shape


class LongitudePad(nn.Module):
    """Circular padding of the last (longitude) axis: (B, C, H, W) -> (B, C, H, W + 2*pad)."""

    def __init__(self, pad: int) -> None:
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (self.pad, self.pad, 0, 0), mode="circular") if self.pad else x

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


def _out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class SphericalCNN(nn.Module):
    """Planar CNN on the equiangular sphere grid (see the module docstring).

    Args:
        in_channels: channels C of the sphere signal.
        num_classes: outputs.
        input_size: (latitude, longitude) grid size, (60, 60) for Cohen et al.'s bandwidth 30.
        channels: output channels of the convs (32, 64); one conv per entry.
        kernel_size: conv kernel (5).
        stride: conv stride (3).
        longitude_padding: circular along longitude + zeros along latitude, (k-1)/2 each (True).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: tuple[int, int] = (60, 60),
        *,
        channels: tuple[int, ...] = (32, 64),
        kernel_size: int = 5,
        stride: int = 3,
        longitude_padding: bool = True,
    ) -> None:
        super().__init__()
        pad = (kernel_size - 1) // 2 if longitude_padding else 0
        h, w = input_size
        layers: list[nn.Module] = []
        c = in_channels
        for c_out in channels:
            layers.append(LongitudePad(pad))  # (B, c, h, w) -> (B, c, h, w + 2 pad)
            conv = nn.Conv2d(c, c_out, kernel_size, stride=stride, padding=(pad, 0))  # (B, c_out, ., .)
            layers.append(conv)
            layers.append(nn.ReLU())
            h, w, c = _out(h, kernel_size, stride, pad), _out(w, kernel_size, stride, pad), c_out
            if h < 1 or w < 1:
                raise ValueError(f"input {tuple(input_size)} is too small for {len(channels)} strided convs")
        self.features = nn.Sequential(*layers)  # (B, C, 60, 60) -> (B, 64, 7, 7)
        self.fc = nn.Linear(c * h * w, num_classes)  # (B, 64*7*7) -> (B, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).flatten(1))  # (B, classes)


def build_spherical(info: Any, **options: Any) -> SphericalCNN:
    """SphericalCNN for a sphere-grid image dataset's `info`; `options` go to `SphericalCNN`."""
    c, h, w = image_shape(info, "spherical")
    return SphericalCNN(c, int(info.num_classes), (h, w), **options)
