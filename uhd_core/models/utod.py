"""utod: a scalable CNN for 64x64 person detection (0.1-3 M parameters), built for int8 later.

Everything is Conv + BN + activation (ReLU in the presets), max-pool, add and concat: ops that fold
and quantize per layer. The width ladder is ``--cnn-width`` (the stem width c; the head runs at 4c).
Its head is ``utod`` (uhd_core/heads/utod_head.py), whose options model also holds the backbone's.
"""

from __future__ import annotations

import torch
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.heads.utod_head import UtodOptions
from uhd_core.layers.blocks import ConvBNAct, DWConvBNAct
from uhd_core.models.registry import register_backbone
from uhd_core.registry import FamilySpec


class SPPF(nn.Module):
    """(B, c_in, H, W) -> (B, c_out, H, W): 1x1 reduce to c_out, concat with its 5x5 stride-1 max-pool,
    1x1 to c_out. One pool widens every cell's view by 4 cells (a 64x64 frame at stride 8 is 8 cells)."""

    def __init__(self, c_in: int, c_out: int, activation: str) -> None:
        super().__init__()
        self.reduce = ConvBNAct(c_in, c_out, 1, 1, activation)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.fuse = ConvBNAct(2 * c_out, c_out, 1, 1, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.reduce(x)
        return self.fuse(torch.cat([y, self.pool(y)], dim=1))


class UtodBackbone(nn.Module):
    """stem 3x3 s2 (3 -> c) -> DWConv s2 (c -> 2c) -> DWConv s2 (2c -> 4c) -> DWConv s1 (4c -> 8c)
    -> DWConv s1 (8c -> 8c) -> SPPF (8c -> 4c).

    Input (B, 3, H, W) float RGB 0..1; output (B, 4c, H/8, W/8) (8c without the SPPF). ``residual``
    adds a 1x1 Conv+BN projection of block 2's output to block 3's and block 4's input to its output.
    """

    def __init__(self, width: int = 16, activation: str = "relu", residual: bool = True, sppf: bool = True) -> None:
        super().__init__()
        c = width
        self.stem = ConvBNAct(3, c, 3, 2, activation)
        self.block1 = DWConvBNAct(c, 2 * c, 2, activation)
        self.block2 = DWConvBNAct(2 * c, 4 * c, 2, activation)
        self.block3 = DWConvBNAct(4 * c, 8 * c, 1, activation)
        self.block4 = DWConvBNAct(8 * c, 8 * c, 1, activation)
        self.residual = residual
        self.proj3 = nn.Sequential(nn.Conv2d(4 * c, 8 * c, 1, bias=False), nn.BatchNorm2d(8 * c)) if residual else None
        self.sppf = SPPF(8 * c, 4 * c, activation) if sppf else nn.Identity()
        self.out_channels = 4 * c if sppf else 8 * c
        self.stride = 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x2 = self.block2(self.block1(self.stem(x)))
        x3 = self.block3(x2)
        if self.proj3 is not None:
            x3 = x3 + self.proj3(x2)
        x4 = self.block4(x3)
        if self.residual:
            x4 = x4 + x3
        return self.sppf(x4)


#: One head; a fixed stride 8 (64x64 -> an 8x8 map).
UTOD_FAMILY = FamilySpec(
    "utod", heads=("utod",), title="UTOD", stride=8, options=UtodOptions,
    smoke_config={"cnn_width": 4, "activation": "relu"},  # width 4: randomized weights stay O(10)
)


@register_backbone(UTOD_FAMILY)
def build_utod(cfg: RunConfig) -> UtodBackbone:
    opts = cfg.family_options
    assert isinstance(opts, UtodOptions)
    return UtodBackbone(cfg.cnn_width, cfg.activation, opts.residual, opts.sppf)
