"""Registry of backbones (keyed by --arch); a family's builder and its FamilySpec register together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from uhd_core.registry import FAMILIES, FamilySpec, Registry

#: --arch -> builder(cfg) -> nn.Module with ``out_channels`` (and ``stride`` for grid backbones).
BACKBONES: Registry[Callable[..., Any]] = Registry("architecture (--arch)")


def register_backbone(spec: FamilySpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``builder(cfg)`` under ``spec.name`` and the family's facts with it."""

    def decorator(builder: Callable[..., Any]) -> Callable[..., Any]:
        BACKBONES.register(spec.name)(builder)
        try:
            FAMILIES.register(spec.name)(spec)
        except ValueError:
            BACKBONES.unregister(spec.name)
            raise
        return builder

    return decorator


def unregister_backbone(name: str) -> None:
    """Undo register_backbone (a test's own family)."""
    BACKBONES.unregister(name)
    FAMILIES.unregister(name)
