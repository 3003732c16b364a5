"""CenterNet head: class heatmap + sub-cell offset + box size, decoded by 3x3 max-pool peaks.

Targets are built for the whole batch with tensor ops (no per-box Python loop): grids are tiny
(at most 16x16 at 64x64 input), so evaluating every box's Gaussian on the full grid is cheaper
than any scatter bookkeeping.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.heads.base import HEADS, DetectorHead
from uhd_core.heads.tracing import traced_min
from uhd_core.layers.blocks import ConvBNAct

#: CenterNet's weight of the size term (sizes are in feature cells, so they dwarf the offsets).
WH_LOSS_WEIGHT = 0.1


def gaussian_radius(height: torch.Tensor, width: torch.Tensor, min_overlap: float = 0.7) -> torch.Tensor:
    """CenterNet's radius rule: the largest corner shift keeping IoU >= min_overlap (3 cases, min).

    height/width: any shape, in feature cells. Returns the same shape (float, >= 0).
    """
    a1 = 1.0
    b1 = height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + torch.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2 = 4.0
    b2 = 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + torch.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3 = 4 * min_overlap
    b3 = -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3).clamp(min=0)


def centernet_focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 2.0, beta: float = 4.0) -> torch.Tensor:
    """Penalty-reduced pixel-wise focal loss (CenterNet eq. 1), normalized by the number of peaks.

    logits, target: (B, C, H, W); target is 1 at object centres and a Gaussian falloff elsewhere.
    log(p) and log(1-p) come from logsigmoid, so confident logits cannot produce log(0).
    """
    logits = logits.float()
    prob = torch.sigmoid(logits)
    pos = target.eq(1).float()
    neg = 1.0 - pos
    pos_loss = F.logsigmoid(logits) * (1 - prob).pow(alpha) * pos
    neg_loss = F.logsigmoid(-logits) * prob.pow(alpha) * (1 - target).pow(beta) * neg
    num_pos = pos.sum()
    return -(pos_loss.sum() + neg_loss.sum()) / num_pos.clamp(min=1.0)


@HEADS.register("centernet")
class CenterNetHead(DetectorHead):
    """Outputs at stride s on a (H, W) = (img_h / s, img_w / s) grid:

    - ``hm`` (B, C, H, W) class-centre logits (sigmoid = heatmap),
    - ``off`` (B, 2, H, W) centre offset inside its cell, in cells (x, y),
    - ``wh`` (B, 2, H, W) box width/height in cells.
    """

    loss_terms = ("hm", "off", "wh")
    output_names = ("hm", "off", "wh")
    grid = True

    def __init__(self, in_channels: int, num_classes: int, heatmap_style: str = "gaussian", head_conv: int = 0,
                 activation: str = "swish") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.heatmap_style = heatmap_style
        # The original's heads are bare 1x1 convs; a shared 3x3 layer adds one more nonlinearity and
        # one cell of context on every side, which the 4-layer backbone is short of.
        self.stem = ConvBNAct(in_channels, head_conv, 3, 1, activation) if head_conv > 0 else nn.Identity()
        in_channels = head_conv if head_conv > 0 else in_channels
        self.hm = nn.Conv2d(in_channels, num_classes, 1)
        self.off = nn.Conv2d(in_channels, 2, 1)
        self.wh = nn.Conv2d(in_channels, 2, 1)
        # Start the heatmap at p=0.1 (focal-loss prior) so the first steps are not dominated by
        # the huge number of negatives.
        nn.init.constant_(self.hm.bias, -math.log((1 - 0.1) / 0.1))

    @classmethod
    def from_config(cls, cfg: RunConfig, in_channels: int) -> CenterNetHead:
        return cls(in_channels, cfg.num_classes, cfg.heatmap_style, cfg.head_conv, cfg.activation)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.stem(features)
        return {"hm": self.hm(features), "off": self.off(features), "wh": self.wh(features)}

    # -- targets --------------------------------------------------------------------------------
    def build_targets(self, boxes: torch.Tensor, labels: torch.Tensor, feature_hw: tuple[int, int]) -> dict[str, Any]:
        """Returns ``hm`` (B, C, H, W) in 0..1, ``cell`` (B, M) flat index y*W+x, ``off`` and ``wh``
        (B, M, 2) in cells, ``mask`` (B, M) bool for real boxes."""
        fh, fw = feature_hw
        valid = labels >= 0
        cx = boxes[..., 0] * fw
        cy = boxes[..., 1] * fh
        bw = boxes[..., 2] * fw
        bh = boxes[..., 3] * fh
        ix = cx.floor().clamp(0, fw - 1)
        iy = cy.floor().clamp(0, fh - 1)
        ys = torch.arange(fh, device=boxes.device, dtype=boxes.dtype).view(1, 1, fh, 1)
        xs = torch.arange(fw, device=boxes.device, dtype=boxes.dtype).view(1, 1, 1, fw)
        dx = xs - ix[..., None, None]
        dy = ys - iy[..., None, None]
        if self.heatmap_style == "gaussian":
            radius = gaussian_radius(bh, bw).floor()[..., None, None]  # CenterNet draws int radii
            sigma = (2 * radius + 1) / 6
            splat = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))
            splat = splat * ((dx.abs() <= radius) & (dy.abs() <= radius))
        elif self.heatmap_style == "elliptical":
            # TTFNet: a Gaussian shaped like the box (sigma = alpha * size / 6, alpha = 0.54), so
            # boxes under ~2 cells still get a soft neighbourhood instead of a lone peak.
            sigma_x = (0.54 * bw / 6).clamp(min=0.3)[..., None, None]
            sigma_y = (0.54 * bh / 6).clamp(min=0.3)[..., None, None]
            splat = torch.exp(-(dx**2 / (2 * sigma_x**2) + dy**2 / (2 * sigma_y**2)))
        else:  # the original tool's single-peak targets: 1 at the centre cell, 0 elsewhere
            splat = ((dx == 0) & (dy == 0)).to(boxes.dtype)
        splat = splat * valid[..., None, None]
        onehot = F.one_hot(labels.clamp(min=0), self.num_classes).to(boxes.dtype) * valid[..., None]
        hm = (splat.unsqueeze(2) * onehot[..., None, None]).amax(dim=1) if boxes.shape[1] else \
            torch.zeros(boxes.shape[0], self.num_classes, fh, fw, device=boxes.device)
        return {
            "hm": hm,
            "cell": (iy * fw + ix).long(),
            "off": torch.stack([cx - ix, cy - iy], dim=-1),
            "wh": torch.stack([bw, bh], dim=-1),
            "mask": valid,
        }

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        hm_loss = centernet_focal_loss(outputs["hm"], targets["hm"])
        mask = targets["mask"].float()[..., None]  # (B, M, 1)
        num = mask.sum().clamp(min=1.0)
        pred_off = _gather_cells(outputs["off"].float(), targets["cell"])
        pred_wh = _gather_cells(outputs["wh"].float(), targets["cell"])
        off_loss = (F.l1_loss(pred_off, targets["off"], reduction="none") * mask).sum() / num
        wh_loss = (F.l1_loss(pred_wh, targets["wh"], reduction="none") * mask).sum() / num
        total = hm_loss + off_loss + WH_LOSS_WEIGHT * wh_loss
        return {"loss": total, "hm": hm_loss, "off": off_loss, "wh": wh_loss}

    # -- decoding -------------------------------------------------------------------------------
    def decode(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        heat = torch.sigmoid(outputs["hm"].float())
        return decode_centernet(heat, outputs["off"].float(), outputs["wh"].float(), topk)

    def export_outputs(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"hm": torch.sigmoid(outputs["hm"]), "off": outputs["off"], "wh": outputs["wh"]}

    def decode_exported(self, exported: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        # the exported heatmap is already a probability
        return decode_centernet(exported["hm"].float(), exported["off"].float(), exported["wh"].float(), topk)


def _gather_cells(maps: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """maps (B, 2, H, W), cell (B, M) flat indices -> (B, M, 2)."""
    flat = maps.flatten(2)  # (B, 2, H*W)
    return flat.gather(2, cell.unsqueeze(1).expand(-1, flat.shape[1], -1)).transpose(1, 2)


def decode_centernet(heat: torch.Tensor, off: torch.Tensor, wh: torch.Tensor, topk: int) -> torch.Tensor:
    """heat (B, C, H, W) probabilities -> (B, K, 6) score, class, cx, cy, w, h (normalized).

    A cell is kept only if it is the maximum of its 3x3 neighbourhood (CenterNet's NMS-free peak
    extraction). Traceable with dynamic shapes (k from the traced size), so it is also the merged
    post-process of an ONNX export.
    """
    b, c, h, w = heat.shape
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (peaks == heat).to(heat.dtype)
    flat = heat.flatten(1)
    scores, idx = flat.topk(traced_min(flat, topk, 1), dim=1)  # (B, K), K = min(topk, C*H*W)
    cls = torch.div(idx, h * w, rounding_mode="floor")
    cell = idx - cls * (h * w)
    ys = torch.div(cell, w, rounding_mode="floor")
    xs = cell - ys * w
    off_k = _gather_cells(off, cell)
    wh_k = _gather_cells(wh, cell).clamp(min=0)
    cx = (xs.to(heat.dtype) + off_k[..., 0]) / w
    cy = (ys.to(heat.dtype) + off_k[..., 1]) / h
    bw = wh_k[..., 0] / w
    bh = wh_k[..., 1] / h
    return torch.stack([scores, cls.to(heat.dtype), cx, cy, bw, bh], dim=-1)
