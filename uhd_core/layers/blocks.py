"""Small convolutional building blocks shared by backbones and heads."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU}


def make_activation(name: str, inplace: bool = True) -> nn.Module:
    """``name``: "relu" | "swish" (the RunConfig ``activation`` values)."""
    return ACTIVATIONS[name](inplace=inplace)


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int = 3, stride: int = 1, activation: str = "swish") -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, bias=False),
            nn.BatchNorm2d(c_out),
            make_activation(activation),
        )


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv (carries the stride) -> 1x1 pointwise -> BN -> activation."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, activation: str = "swish") -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            make_activation(activation),
        )


class SqueezeExcite(nn.Module):
    """SE with a channel reduction of 4."""

    def __init__(self, channels: int, activation: str = "swish", reduction: int = 4) -> None:
        super().__init__()
        mid = max(1, channels // reduction)
        self.fc1 = nn.Conv2d(channels, mid, 1)
        self.act = make_activation(activation)
        self.fc2 = nn.Conv2d(mid, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


class EffectiveSqueezeExcite(nn.Module):
    """eSE (CenterMask/VoVNetV2): one 1x1 conv, no reduction."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))


def make_se(kind: str, channels: int, activation: str) -> nn.Module:
    if kind == "se":
        return SqueezeExcite(channels, activation)
    if kind == "ese":
        return EffectiveSqueezeExcite(channels)
    return nn.Identity()


class DWConvBNAct(nn.Sequential):
    """3x3 depthwise ConvBNAct (carries the stride) -> 1x1 pointwise ConvBNAct.

    Unlike :class:`DepthwiseSeparable`, both convs get their own BN and activation, so each conv has
    a BN to fold into and an activation range of its own (what an int8 export quantizes per layer).
    (B, c_in, H, W) -> (B, c_out, H / stride, W / stride).
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, activation: str = "relu") -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
            nn.BatchNorm2d(c_in),
            make_activation(activation),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
            make_activation(activation),
        )
