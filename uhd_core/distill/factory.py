"""Which distiller a config asks for (by the teacher flags it sets), and its teacher-file checks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from uhd_core.config import RunConfig
from uhd_core.distill.base import DISTILLERS, Distiller
from uhd_core.distill.feature import check_feature_teacher_files
from uhd_core.distill.query import check_query_teacher_files

#: distiller name -> its teacher-file check ``(cfg) -> None`` (raises CheckpointError)
TEACHER_FILE_CHECKS: dict[str, Callable[[RunConfig], None]] = {
    "query": check_query_teacher_files,
    "feature": check_feature_teacher_files,
}


def distiller_name(cfg: RunConfig) -> str | None:
    """--teacher-ckpt: "query" (a transformer teacher, per-query terms); --teacher-backbone: "feature"
    (a ViT teacher, feature term); neither: None. (check_implemented refuses both at once.)"""
    if cfg.teacher_ckpt:
        return "query"
    if cfg.teacher_backbone:
        return "feature"
    return None


def check_teacher_files(cfg: RunConfig) -> None:
    """The teacher's files exist (cheap; called before any run dir, log or event file is made)."""
    name = distiller_name(cfg)
    if name is not None:
        TEACHER_FILE_CHECKS[name](cfg)


def build_distiller(cfg: RunConfig, device: torch.device) -> Distiller | None:
    """The distiller the teacher flags ask for (its teacher loaded: a wrong file is refused now); None without one."""
    name = distiller_name(cfg)
    return DISTILLERS.get(name)(cfg, device) if name is not None else None
