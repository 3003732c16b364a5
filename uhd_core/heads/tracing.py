"""Helpers that keep decoders exportable with dynamic shapes (ONNX tracing)."""

from __future__ import annotations

import torch


def traced_min(x: torch.Tensor, k: int, dim: int) -> int:
    """min(k, x.shape[dim]) — a traced tensor while tracing, so dynamic shapes keep it symbolic.

    Python ``min`` on a traced size freezes the branch taken at the export size; torch.topk accepts
    the 0-d tensor (the return annotation is the same white lie torchvision's ``_topk_min`` tells).
    Outside tracing it is the plain int.
    """
    if not torch.jit.is_tracing():
        return min(k, int(x.shape[dim]))
    size = torch._shape_as_tensor(x)[dim].unsqueeze(0)
    # ReduceMin, not Clip: OpenCV's dnn has no int64 Clip
    return torch.cat([torch.full_like(size, k), size]).min()  # type: ignore[return-value]
