"""The original tool's tiny CNN backbone ("arch cnn"), shared by the CenterNet and anchor heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.layers.blocks import ConvBNAct, DepthwiseSeparable, make_se
from uhd_core.models.registry import register_backbone
from uhd_core.registry import FamilySpec


class MiniCNN(nn.Module):
    """stem conv s2 -> 3 depthwise-separable blocks (s2, s2|1, s2|1) -> (optional) SE.

    Input (B, 3, H, W) float RGB in 0..1; output (B, C_out, H/stride, W/stride) with
    C_out = round(width * last_width_scale). Output stride 16 = all blocks stride 2; 8 and 4 turn
    the last one or two blocks to stride 1 (same parameters, finer grid).
    ``use_skip`` sums average-pooled stem and block-1 features into the last stage (1x1 projections
    only where the width differs), giving the last stage shallow, high-resolution evidence.
    """

    def __init__(self, width: int = 32, activation: str = "swish", use_skip: bool = False, output_stride: int = 16,
                 last_se: str = "none", last_width_scale: float = 1.0) -> None:
        super().__init__()
        if output_stride not in (4, 8, 16):
            raise ValueError(f"output_stride must be 4, 8 or 16, got {output_stride}")
        out_c = int(round(width * max(1.0, last_width_scale)))
        s2 = 2 if output_stride >= 8 else 1
        s3 = 2 if output_stride == 16 else 1
        self.stem = ConvBNAct(3, width, 3, 2, activation)
        self.block1 = DepthwiseSeparable(width, width, 2, activation)
        self.block2 = DepthwiseSeparable(width, width, s2, activation)
        self.block3 = DepthwiseSeparable(width, out_c, s3, activation)
        self.se = make_se(last_se, out_c, activation)
        self.use_skip = use_skip
        if use_skip:
            self.skip_stem = nn.Conv2d(width, out_c, 1, bias=False) if out_c != width else nn.Identity()
            self.skip_block1 = nn.Conv2d(width, out_c, 1, bias=False) if out_c != width else nn.Identity()
        self.out_channels = out_c
        self.stride = output_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        s1 = self.block1(s0)
        out = self.se(self.block3(self.block2(s1)))
        if self.use_skip:
            size = out.shape[-2:]
            out = out + self.skip_stem(F.adaptive_avg_pool2d(s0, size)) + self.skip_block1(F.adaptive_avg_pool2d(s1, size))
        return out


#: CenterNet by default, the anchor head with --use-anchor; both predict on the stride-`output_stride` grid.
CNN_FAMILY = FamilySpec(
    "cnn", heads=("centernet", "anchor"), title="CNN", stride_field="output_stride",
    teachers={"teacher_backbone": "ViT features into the CNN"},
    smoke_config={"cnn_width": 8},
)


@register_backbone(CNN_FAMILY)
def build_cnn(cfg: RunConfig) -> MiniCNN:
    return MiniCNN(cfg.cnn_width, cfg.activation, cfg.use_skip, cfg.output_stride, cfg.last_se, cfg.last_width_scale)
