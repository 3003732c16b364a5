"""Exponential moving average of model weights (with the YOLOv5 warm-up ramp)."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    """ema = d * ema + (1 - d) * model, with d = decay * (1 - exp(-updates / ramp)).

    The ramp keeps early averages from being dominated by the random initialisation, which
    matters for short runs: with decay 0.9998 and no ramp, 300 updates would leave ~94% of the
    initial weights in the average. Buffers (BatchNorm statistics) are copied, not averaged.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9998, ramp: float = 2000.0, updates: int = 0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.ramp = ramp
        self.updates = updates

    def current_decay(self) -> float:
        return self.decay * (1 - math.exp(-self.updates / self.ramp))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        model_state = model.state_dict()
        for name, value in self.module.state_dict().items():
            src = model_state[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(d).add_(src, alpha=1 - d)
            else:
                value.copy_(src)

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
