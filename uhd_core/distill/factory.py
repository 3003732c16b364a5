"""Which distiller a config asks for (by the teacher flags it sets)."""

from __future__ import annotations

import torch

import uhd_core.distill.feature  # noqa: F401  (registers the "feature" distiller)
import uhd_core.distill.query  # noqa: F401  (registers the "query" distiller)
from uhd_core.config import RunConfig
from uhd_core.distill.base import DISTILLERS, Distiller


def build_distiller(cfg: RunConfig, device: torch.device) -> Distiller | None:
    """--teacher-ckpt: a transformer teacher, per-query terms; --teacher-backbone: a ViT teacher, feature
    term; neither: None. (check_implemented refuses both at once.)"""
    if cfg.teacher_ckpt:
        return DISTILLERS.get("query")(cfg, device)
    if cfg.teacher_backbone:
        return DISTILLERS.get("feature")(cfg, device)
    return None
