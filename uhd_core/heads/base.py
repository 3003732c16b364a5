"""The per-family head interface the trainer, evaluator and exporter talk to (DESIGN.md rule 4)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from uhd_core.registry import HEADS

if TYPE_CHECKING:
    from uhd_core.config import RunConfig

__all__ = ["HEADS", "DetectorHead"]  # HEADS lives on the ground floor, where the config reads head facts


class DetectorHead(nn.Module, ABC):
    """Owns one family's output layers, targets, loss and decoding.

    Raw outputs are a dict of tensors named per family (e.g. ``hm``/``off``/``wh``). Decoded
    detections are always (B, K, 6): score, class_id, cx, cy, w, h — boxes normalized 0..1, rows
    sorted by score, padded with score 0 where fewer than K exist.
    """

    #: loss-term names this head reports besides the total ``loss`` (the dashboard shows these)
    loss_terms: tuple[str, ...] = ()
    #: names of ``export_outputs`` in the order an export writes them (empty = the dict's order)
    output_names: tuple[str, ...] = ()
    #: predicts on the backbone's output grid: input sides must be multiples of the family's stride
    #: (FamilySpec.stride_field). True by default, so a head that forgets it is refused loudly, not trained badly.
    grid: bool = True
    #: RunConfig overrides this head needs for a tiny instance (contract tests), on top of the family's
    smoke_config: Mapping[str, Any] = MappingProxyType({})

    @abstractmethod
    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def output_hw(self, outputs: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(H, W) of the output grid that targets are built for (dense heads: any output map)."""
        first = next(iter(outputs.values()))
        return int(first.shape[-2]), int(first.shape[-1])

    @abstractmethod
    def build_targets(self, boxes: torch.Tensor, labels: torch.Tensor, feature_hw: tuple[int, int]) -> dict[str, Any]:
        """boxes (B, M, 4) cxcywh normalized, labels (B, M) with -1 padding -> family targets."""

    @abstractmethod
    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Named scalar terms plus ``loss`` (the total that is back-propagated)."""

    @abstractmethod
    def decode(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        """Raw outputs -> (B, K, 6) detections (see class docstring)."""

    def export_postprocess(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        """Traceable post-process merged into an ONNX graph; by default the same as decode."""
        return self.decode(outputs, topk)

    def export_outputs(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw outputs as exported without the merged post-process."""
        return outputs

    def decode_exported(self, exported: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        """decode() for what ``export_outputs`` produced (an ONNX file's raw outputs); by default the same."""
        return self.decode(exported, topk)

    # -- what a head needs decided before training (called by the trainer once, before the model is built)
    @classmethod
    def stand_in_config(cls, cfg: RunConfig) -> RunConfig:
        """A config that builds a model of the same tensor shapes before ``prepare_config`` ran (for the
        checks made before any data is read: --ckpt fit, checkpoint size). Default: ``cfg`` itself."""
        return cfg

    @classmethod
    def prepare_config(cls, cfg: RunConfig, train_boxes: Sequence[np.ndarray]) -> RunConfig:
        """The config this head trains with, given the training split's boxes (one (M, 4) cxcywh
        normalized array per image). Decided once, before the model is built, then never changed; it
        is what config.yaml and every checkpoint store. Default: ``cfg`` unchanged."""
        return cfg
