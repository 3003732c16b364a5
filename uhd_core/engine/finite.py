"""Non-finite guards of training: weights and buffers checked after every step, checkpoint payloads
before every write, and the one message that says what usually causes a divergence."""

from __future__ import annotations

from typing import Any

import torch

from uhd_core.config import RunConfig


class FiniteWatch:
    """Every floating-point tensor a training step changes in place (parameters, BatchNorm buffers, a
    distiller's trainable parts), checked for NaN/inf with one fused reduction.

    A step whose loss is finite can still write inf/NaN into the weights (an update that overflows at a
    huge --lr, fp16 overflow); the loss check alone let such weights train on and be saved. The check is
    ``torch._foreach_norm(tensors, inf)`` (max |x| per tensor: NaN and inf propagate, a large finite
    weight cannot overflow as a 2-norm would) and one host sync. Measured on 1 CPU thread: 130 us per
    check on the quickstart model (38 tensors) against a 13.5 ms step, 44 us against 3.6 ms for a width-8
    CNN: about 1% of a step.
    """

    def __init__(self, named: list[tuple[str, torch.Tensor]]) -> None:
        self.named = [(name, t) for name, t in named if t.is_floating_point()]
        self.tensors = [t.detach() for _, t in self.named]

    def all_finite(self) -> bool:
        if not self.tensors:
            return True
        with torch.no_grad():
            return bool(torch.isfinite(torch.stack(torch._foreach_norm(self.tensors, float("inf")))).all())

    def bad_names(self) -> list[str]:
        """The names of the tensors holding a NaN or inf (slow path, after all_finite() said False)."""
        return [name for name, t in self.named if not bool(torch.isfinite(t.detach()).all())]


def nonfinite_entries(value: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a (nested) checkpoint payload holding NaN or inf."""
    if isinstance(value, torch.Tensor):
        return [prefix] if value.is_floating_point() and not bool(torch.isfinite(value).all()) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    return [name for key, item in items for name in nonfinite_entries(item, f"{prefix}.{key}" if prefix else str(key))]


def divergence_causes(cfg: RunConfig) -> str:
    """The usual reasons weights or losses go non-finite, with this run's values."""
    return (f"Likely causes: --lr too high (now {cfg.lr:g}), fp16 overflow with --use-amp (train without it), "
            f"--grad-clip-norm 0 (now {cfg.grad_clip_norm:g}), or very large loss weights")


def name_list(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
