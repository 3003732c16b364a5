"""The distiller interface the training loop talks to, and the cosine ramp of distillation weights."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from uhd_core.registry import Registry

#: name -> factory ``(cfg, device) -> Distiller``
DISTILLERS: Registry = Registry("distiller")


class Distiller(nn.Module, ABC):
    """Holds a frozen teacher and computes distillation terms for the student's raw outputs.

    The teacher is never part of the student model: checkpoints and exports stay student-only.
    """

    #: loss-term names this distiller reports (each also appears in the logs and the dashboard)
    loss_terms: tuple[str, ...] = ()
    #: (H, W) input size the teacher wants; the data pipeline renders each sample at it too
    teacher_img_size: tuple[int, int]

    @abstractmethod
    def forward(self, student_outputs: dict[str, torch.Tensor], teacher_images: torch.Tensor,
                scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (weighted sum to add to the loss (scaled by ``scale``), unweighted named terms).

        teacher_images: (B, 3, Ht, Wt) float RGB 0..1, the student's augmented batch at the teacher size.
        """

    def train(self, mode: bool = True) -> Distiller:
        # The teacher stays in eval mode (frozen BatchNorm statistics) whatever the loop asks for.
        super().train(False)
        return self


def cosine_ramp(progress: float) -> float:
    """0 at the start of training, 1 at the end, along half a cosine: 0.5 * (1 - cos(pi * progress))."""
    progress = min(max(progress, 0.0), 1.0)
    return 0.5 * (1.0 - math.cos(math.pi * progress))
