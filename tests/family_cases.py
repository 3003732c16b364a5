"""Test cases generated from the registries (timm's tests iterate ``list_models()`` the same way):
every registered family x every head it can carry, each as a tiny config from the facts the family
and the head declare (FamilySpec.smoke_config, DetectorHead.smoke_config)."""

from __future__ import annotations

from typing import Any

import torch

from uhd_core.config import RunConfig, build_config
from uhd_core.config_checks import head_overrides
from uhd_core.models.detector import Detector, build_detector
from uhd_core.registry import families, head_class


def family_head_cases() -> list[str]:
    """'ARCH-HEAD' for every registered family and allowed head (the default head first)."""
    return [f"{spec.name}-{head}" for spec in families() for head in spec.heads]


def smoke_overrides(case: str) -> dict[str, Any]:
    """RunConfig overrides of a tiny model of ``case`` ('ARCH-HEAD')."""
    arch, head = case.split("-", 1)
    spec = next(s for s in families() if s.name == arch)
    return {"arch": arch, **spec.smoke_config, **head_overrides(arch, head), **head_class(head).smoke_config}


def randomized(case: str, **extra: Any) -> tuple[Detector, RunConfig]:
    """A tiny model of ``case`` in eval mode with randomized weights and BatchNorm statistics (a fresh
    head's biases make nearly all scores equal, which would leave merged comparisons nothing to sort)."""
    cfg = build_config(None, {**smoke_overrides(case), **extra})
    torch.manual_seed(0)
    model = build_detector(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval(), cfg
