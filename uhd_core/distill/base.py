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
    """Holds a frozen teacher (at ``self.teacher``) and computes distillation terms for the student.

    The teacher is never part of the student model: checkpoints and exports stay student-only.
    Anything else a distiller owns (e.g. a feature adapter) trains together with the student: it is
    in ``trainable_parameters()`` and its state goes into checkpoints (``student_side_state_dict``)
    so a resumed run continues with it, but it is not exported.
    """

    #: loss-term names this distiller reports (each also appears in the logs and the dashboard)
    loss_terms: tuple[str, ...] = ()
    #: (H, W) input size the teacher wants; the data pipeline renders each sample at it too
    teacher_img_size: tuple[int, int]
    teacher: nn.Module

    @abstractmethod
    def forward(self, student_outputs: dict[str, torch.Tensor], student_features: torch.Tensor,
                teacher_images: torch.Tensor, scale: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (weighted sum to add to the loss (scaled by ``scale``), unweighted named terms).

        student_outputs: the head's raw outputs; student_features: the backbone's output (the head's
        input), e.g. (B, C, h, w) for the CNN; teacher_images: (B, 3, Ht, Wt) float RGB 0..1, the
        student's augmented batch at the teacher size.
        """

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()  # frozen statistics and no dropout, whatever the loop asks for
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.")]

    def student_side_state_dict(self) -> dict[str, torch.Tensor]:
        """State of everything but the teacher (which comes from its own file, and may be large)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_student_side_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.student_side_state_dict())
        if set(state) != expected:
            raise ValueError(f"distiller state keys {sorted(state)} do not match {sorted(expected)}")
        self.load_state_dict(state, strict=False)


def cosine_ramp(progress: float) -> float:
    """0 at the start of training, 1 at the end, along half a cosine: 0.5 * (1 - cos(pi * progress))."""
    progress = min(max(progress, 0.0), 1.0)
    return 0.5 * (1.0 - math.cos(math.pi * progress))
