"""ViT backbone teacher -> CNN student: distillation of the student's last feature map.

The student's backbone output (the heads' input, (B, C, h, w)) goes through a learned 1x1 adapter
to the teacher's width D; the teacher's patch features (B, D, H_t/16, W_t/16) are resized
(bilinear) to the student grid when they differ. Both are L2-normalized over channels at every
location, then compared (``--distill-feat-loss``):

- ``l1`` (the original's choice): mean |s - t|;
- ``mse``: mean (s - t)^2;
- ``cosine``: mean (1 - <s, t>) over locations.

The adapter trains with the student and is checkpointed for resume, but it is not part of the
student model, so exports never contain it.

Teacher input size: by default the one that gives the teacher's 16-pixel patches the student's
output grid (a stride-8 student at 64x64 -> the teacher at 128x128, an 8x8 grid), so no resize of
features is needed; ``--teacher-img-size`` overrides it (``64x64`` feeds the teacher the student's
own input, as the original did: a 4x4 grid, upsampled to the student's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.distill.base import DISTILLERS, Distiller
from uhd_core.distill.vit import VIT_TEACHER_ARCHS, ViTTeacher, load_vit_teacher
from uhd_core.errors import CheckpointError, ConfigError
from uhd_core.models.registry import BACKBONES

FeatureLossKind = Literal["l1", "cosine", "mse"]


def feature_distill_loss(student: torch.Tensor, teacher: torch.Tensor, kind: FeatureLossKind = "l1") -> torch.Tensor:
    """student, teacher: (B, D, h, w) of the same shape -> scalar loss on channel-L2-normalized features."""
    s = F.normalize(student.float(), dim=1)
    t = F.normalize(teacher.float(), dim=1)
    if kind == "l1":
        return F.l1_loss(s, t)
    if kind == "mse":
        return F.mse_loss(s, t)
    if kind == "cosine":
        return (1.0 - (s * t).sum(1)).mean()
    raise ValueError(f"unknown feature loss {kind!r} (l1, cosine, mse)")


def student_geometry(cfg: RunConfig) -> tuple[int, int]:
    """(channels, stride) of the student's backbone output, from its config (builds a throwaway backbone)."""
    backbone = BACKBONES.get(cfg.arch)(cfg)
    return int(backbone.out_channels), int(getattr(backbone, "stride", 0))


def default_teacher_size(img_size: tuple[int, int], student_stride: int, patch: int = 16) -> tuple[int, int]:
    """The input size whose patch grid equals the student's output grid (H/stride x W/stride)."""
    return (img_size[0] // student_stride * patch, img_size[1] // student_stride * patch)


class FeatureDistiller(Distiller):
    loss_terms = ("distill_feat",)

    def __init__(self, teacher: ViTTeacher, student_channels: int, teacher_img_size: tuple[int, int], *,
                 weight: float, loss_kind: FeatureLossKind = "l1") -> None:
        super().__init__()
        self.teacher = teacher
        self.adapter = nn.Conv2d(student_channels, teacher.out_channels, 1)
        self.teacher_img_size = tuple(teacher_img_size)
        self.weight = weight
        self.loss_kind = loss_kind

    def forward(self, student_outputs: dict[str, torch.Tensor], student_features: torch.Tensor,
                teacher_images: torch.Tensor, scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad():
            target = self.teacher(teacher_images)
        projected = self.adapter(student_features)
        if target.shape[-2:] != projected.shape[-2:]:
            target = F.interpolate(target.float(), size=projected.shape[-2:], mode="bilinear", align_corners=False)
        loss = feature_distill_loss(projected, target, self.loss_kind)
        return scale * self.weight * loss, {"distill_feat": loss.detach()}


def check_feature_teacher_files(cfg: RunConfig) -> None:
    """--teacher-backbone must name a file (checked before any run dir exists; loaded by the builder)."""
    if cfg.teacher_backbone and not Path(cfg.teacher_backbone).expanduser().is_file():
        spec = VIT_TEACHER_ARCHS.get(cfg.teacher_backbone_arch)
        wanted = f"; obtain the official {spec.official_file} and put it there" if spec else ""
        raise CheckpointError(f"--teacher-backbone {cfg.teacher_backbone}: no such file{wanted} "
                              "(or pass --teacher-backbone PATH)")


@DISTILLERS.register("feature")
def build_feature_distiller(cfg: RunConfig, device: torch.device) -> FeatureDistiller:
    if cfg.teacher_backbone_arch not in VIT_TEACHER_ARCHS:
        raise ConfigError(f"--teacher-backbone-arch {cfg.teacher_backbone_arch!r} is not a known teacher "
                          f"(known: {', '.join(VIT_TEACHER_ARCHS)})")
    channels, stride = student_geometry(cfg)
    teacher, _report = load_vit_teacher(cfg.teacher_backbone_arch, cfg.teacher_backbone)
    size = cfg.teacher_img_size or default_teacher_size(cfg.img_size, stride, teacher.patch_size)
    if size[0] % teacher.patch_size or size[1] % teacher.patch_size:
        raise ConfigError(f"--teacher-img-size {size[0]}x{size[1]}: a ViT teacher needs multiples of "
                          f"{teacher.patch_size}")
    return FeatureDistiller(teacher, channels, size, weight=cfg.distill_feat,
                            loss_kind=cfg.distill_feat_loss).to(device)
