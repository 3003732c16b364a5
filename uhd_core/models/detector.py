"""A detector = backbone (by --arch) + DetectorHead (by head family), both built by name."""

from __future__ import annotations

import torch
from torch import nn

import uhd_core.heads.anchor  # noqa: F401  (registers the head)
import uhd_core.heads.centernet  # noqa: F401  (registers the head)
import uhd_core.heads.detr  # noqa: F401  (registers the head)
import uhd_core.models.cnn  # noqa: F401  (registers the backbone)
import uhd_core.models.transformer  # noqa: F401  (registers the backbone)
from uhd_core.config import RunConfig
from uhd_core.heads.base import HEADS, DetectorHead
from uhd_core.models.registry import BACKBONES


class Detector(nn.Module):
    """Input (B, 3, H, W) float RGB 0..1 -> the head's raw outputs (dict of tensors)."""

    def __init__(self, backbone: nn.Module, head: DetectorHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.head(self.backbone(images))

    def forward_with_features(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """-> (raw outputs, the backbone's output that the head consumed) for feature distillation."""
        features = self.backbone(images)
        return self.head(features), features


def build_detector(cfg: RunConfig) -> Detector:
    backbone = BACKBONES.get(cfg.arch)(cfg)
    head = HEADS.get(cfg.head_name).from_config(cfg, backbone.out_channels)
    return Detector(backbone, head)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
