"""Which distiller a config asks for (by the teacher flags it sets)."""

from __future__ import annotations

import torch

import uhd_core.distill.query  # noqa: F401  (registers the "query" distiller)
from uhd_core.config import RunConfig
from uhd_core.distill.base import DISTILLERS, Distiller


def build_distiller(cfg: RunConfig, device: torch.device) -> Distiller | None:
    """The distiller for --teacher-ckpt (transformer teacher, per-query terms), or None without a teacher."""
    if not cfg.teacher_ckpt:
        return None
    return DISTILLERS.get("query")(cfg, device)
