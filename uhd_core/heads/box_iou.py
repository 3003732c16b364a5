"""IoU, GIoU and CIoU of axis-aligned boxes in one vectorized function (box loss of the anchor head)."""

from __future__ import annotations

import math
from typing import Literal

import torch

IouKind = Literal["iou", "giou", "ciou"]


def bbox_iou(pred: torch.Tensor, target: torch.Tensor, kind: IouKind = "iou", eps: float = 1e-7) -> torch.Tensor:
    """IoU-family overlap of matching boxes.

    pred, target: (..., 4) cx, cy, w, h (any consistent unit). Returns (...):

    - ``iou``  = inter / union, in 0..1;
    - ``giou`` = iou - (enclosing area - union) / enclosing area, in -1..1 (Rezatofighi et al. 2019);
    - ``ciou`` = iou - centre distance^2 / enclosing diagonal^2 - alpha * v, with
      v = 4/pi^2 (atan(wt/ht) - atan(wp/hp))^2 and alpha = v / (1 - iou + v) treated as a constant
      (computed under no_grad, as in Zheng et al. 2020 and YOLOv5).

    ``eps`` keeps every division finite for degenerate (zero-size) boxes, so gradients stay finite.
    """
    if kind not in ("iou", "giou", "ciou"):
        raise ValueError(f"kind must be 'iou', 'giou' or 'ciou', got {kind!r}")
    px, py, pw, ph = pred.unbind(-1)
    tx, ty, tw, th = target.unbind(-1)
    p_x1, p_x2 = px - pw / 2, px + pw / 2
    p_y1, p_y2 = py - ph / 2, py + ph / 2
    t_x1, t_x2 = tx - tw / 2, tx + tw / 2
    t_y1, t_y2 = ty - th / 2, ty + th / 2
    inter = (torch.minimum(p_x2, t_x2) - torch.maximum(p_x1, t_x1)).clamp(min=0) * \
            (torch.minimum(p_y2, t_y2) - torch.maximum(p_y1, t_y1)).clamp(min=0)
    union = pw * ph + tw * th - inter + eps
    iou = inter / union
    if kind == "iou":
        return iou
    cw = torch.maximum(p_x2, t_x2) - torch.minimum(p_x1, t_x1)  # enclosing box width
    ch = torch.maximum(p_y2, t_y2) - torch.minimum(p_y1, t_y1)
    if kind == "giou":
        c_area = cw * ch + eps
        return iou - (c_area - union) / c_area
    c2 = cw**2 + ch**2 + eps  # enclosing diagonal squared
    rho2 = (px - tx) ** 2 + (py - ty) ** 2
    v = (4 / math.pi**2) * (torch.atan(tw / (th + eps)) - torch.atan(pw / (ph + eps))) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)
