"""The utod head: an IoU-aware anchor head on one stride-8 map, for 64x64 person detection.

Per cell and anchor (A anchors, person-shaped by default): a box (tx, ty, tw, th), an objectness
logit, a quality logit (predicts the IoU of its own box) and, only with more than one class, class
logits. Each comes from its own tower (DWConv + 1x1) on a shared trunk: a context DWConv, a residual
context block and an optional large-object branch (dw3x3 stride 2 -> stride 16, N DWConv blocks,
nearest upsample, added back), because at stride 8 a person filling a 64x64 frame is wider than the
receptive field of the backbone's last cell.

Decoding (no exp, so nothing overflows and int8 keeps its range): ``cx = (sigmoid(tx) + gx) / W``,
``w = anchor_w * wh_scale_w * softplus(tw)`` (``wh_scale`` a learned (A, 2) factor, initialised to 1).

Assignment: one positive per box: the cell holding its centre and the anchor with the best shape-only
(w, h) IoU against the effective anchors. Loss: ``box`` = 1 - CIoU at positives; the quality and
objectness targets are the same map: the detached IoU of the positive's decoded box (clamped 0..1),
0 at every other anchor-cell; both BCE, averaged over all anchor-cells (hence weights 16/16 against the
box's 1). Score: ``quality`` = sigmoid(q)^p (x class prob), or ``obj_quality`` = sigmoid(obj) x sigmoid(q)^p.

Raw outputs (the non-merged export writes these, each its own tensor so int8 gives each its own scale):
``box`` (B, A*4, H, W) channel 4k+i = anchor k's field i (tx, ty, tw, th); ``obj`` and ``quality``
(B, A, H, W) logits; ``cls`` (B, A*C, H, W), channel C*k+c, only when C > 1. Anchors and wh_scale are
in the checkpoint (``head.anchors``, ``head.wh_scale``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.errors import ConfigError
from uhd_core.heads.anchor import NMS_IOU, fast_nms, fit_config_anchors
from uhd_core.heads.base import HEADS, DetectorHead
from uhd_core.heads.box_iou import bbox_iou
from uhd_core.heads.tracing import traced_min
from uhd_core.layers.blocks import ConvBNAct, DWConvBNAct, make_activation

#: Person-shaped (w, h) anchors, normalized, sorted by area (the original's published UltraTinyOD set),
#: used when neither --anchors nor --auto-anchors is given.
DEFAULT_ANCHORS = ((0.04375, 0.094437), (0.141667, 0.394426), (0.19375, 0.540625), (0.254172, 0.636096),
                   (0.320819, 0.708333), (0.414578, 0.762981), (0.53125, 0.833326), (0.739375, 0.916667))
#: Objectness and quality start at p = 0.01: almost every anchor-cell is background.
PRIOR_LOGIT = -math.log((1 - 0.01) / 0.01)


class UtodOptions(BaseModel):
    """The utod family's own options (``--arch-options 'lob=1,lob_depth=2,...'``). It lives with the head
    (a lower floor than the backbone) because both read it; the FamilySpec in models/utod.py names it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    residual: bool = Field(True, description="residual adds on the backbone's stride-1 blocks")
    sppf: bool = Field(True, description="SPPF (1x1 reduce, 5x5 max-pool, concat, 1x1) at the end of the backbone")
    lob: bool = Field(True, description="large-object branch (stride 16) in the head")
    lob_depth: int = Field(2, ge=1, le=8, description="DWConv blocks of the large-object branch")
    lob_scale: float = Field(1.25, gt=0, le=4, description="width of the large-object branch / head width")
    score: Literal["quality", "obj_quality"] = Field("quality", description="score rule at inference")
    quality_power: float = Field(1.0, gt=0, le=8, description="p in the score's sigmoid(quality)^p")
    w_box: float = Field(1.0, ge=0, le=1000, description="weight of the 1 - CIoU term")
    w_obj: float = Field(16.0, ge=0, le=1000, description="weight of the objectness BCE")
    w_qual: float = Field(16.0, ge=0, le=1000, description="weight of the quality BCE")
    w_cls: float = Field(1.0, ge=0, le=1000, description="weight of the class BCE (more than one class)")
    learn_wh_scale: bool = Field(True, description="learn a per-anchor (w, h) factor on the anchors")
    # 100, not the Fast NMS's own 4 x topk: its cost is quadratic (w16 merged ONNX 0.42 -> 0.26 ms at topk 50).
    # A default rather than a preset key, so an --arch-options ablation (which replaces the preset's) keeps it.
    nms_candidates: int = Field(100, ge=0, le=100000, description="anchor-cells kept (best score) before the Fast "
                                "NMS, so at most this many x classes detections; 0 = the NMS's own 4 x topk")


def _tower(c: int, depth: int, out: int, activation: str) -> nn.Sequential:
    """depth x DWConv (c -> c) then a 1x1 prediction conv (with bias) c -> out."""
    return nn.Sequential(*[DWConvBNAct(c, c, 1, activation) for _ in range(depth)], nn.Conv2d(c, out, 1))


class LargeObjectBranch(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): dw3x3 s2 + BN + act, 1x1 C -> L, depth x DWConv at stride 16,
    nearest upsample back to (H, W), 1x1 L -> C. Its output is added to the trunk."""

    def __init__(self, c: int, width: int, depth: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(c, c, 3, 2, 1, groups=c, bias=False), nn.BatchNorm2d(c),
                                  make_activation(activation))
        self.widen = ConvBNAct(c, width, 1, 1, activation)
        self.blocks = nn.Sequential(*[DWConvBNAct(width, width, 1, activation) for _ in range(depth)])
        self.back = ConvBNAct(width, c, 1, 1, activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.blocks(self.widen(self.down(x)))
        return self.back(F.interpolate(y, size=x.shape[-2:], mode="nearest"))


@HEADS.register("utod")
class UtodHead(DetectorHead):
    """Input (B, C, H, W) stride-8 features; outputs as the module docstring lists."""

    loss_terms = ("box", "obj", "qual")
    output_names = ("box", "obj", "quality")
    grid = True
    smoke_config = MappingProxyType({})

    def __init__(self, in_channels: int, num_classes: int, anchors: Sequence[Sequence[float]],
                 options: UtodOptions | None = None, activation: str = "relu") -> None:
        super().__init__()
        opts = options or UtodOptions()
        anchors_t = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
        if anchors_t.numel() == 0 or not bool((anchors_t > 0).all()):
            raise ConfigError("the utod head needs positive anchors: pass --anchors 'w,h ...' or --auto-anchors")
        self.opts = opts
        self.num_classes = num_classes
        self.num_anchors = a = int(anchors_t.shape[0])
        #: one class: no class branch at all (the score is the quality, or obj x quality)
        self.cls_out = num_classes if num_classes > 1 else 0
        if self.cls_out:
            self.loss_terms = (*type(self).loss_terms, "cls")
            self.output_names = (*type(self).output_names, "cls")
        self.register_buffer("anchors", anchors_t)  # (A, 2) normalized w, h
        if opts.learn_wh_scale:
            self.wh_scale = nn.Parameter(torch.ones(a, 2))
        else:  # a constant 1, kept under the same name so decode and checkpoints read it alike
            self.register_buffer("wh_scale", torch.ones(a, 2))
        c = in_channels
        self.context = DWConvBNAct(c, c, 1, activation)
        self.context_res = nn.Sequential(DWConvBNAct(c, c, 1, activation), ConvBNAct(c, c, 1, 1, activation),
                                         DWConvBNAct(c, c, 1, activation))
        self.lob = LargeObjectBranch(c, max(8, round(c * opts.lob_scale)), opts.lob_depth, activation) \
            if opts.lob else None
        self.box_tower = _tower(c, 2, a * 4, activation)
        self.quality_tower = _tower(c, 2, a, activation)
        self.obj_tower = _tower(c, 1, a, activation)
        self.cls_tower = _tower(c, 2, a * self.cls_out, activation) if self.cls_out else None
        with torch.no_grad():  # why: see PRIOR_LOGIT; box and class biases stay 0
            self.obj_tower[-1].bias.fill_(PRIOR_LOGIT)
            self.quality_tower[-1].bias.fill_(PRIOR_LOGIT)
            if self.cls_tower is not None:
                self.cls_tower[-1].bias.fill_(PRIOR_LOGIT)
            self.box_tower[-1].bias.zero_()

    @classmethod
    def from_config(cls, cfg: RunConfig, in_channels: int) -> UtodHead:
        opts = cfg.family_options if isinstance(cfg.family_options, UtodOptions) else UtodOptions()
        return cls(in_channels, cfg.num_classes, list(cfg.anchors) or DEFAULT_ANCHORS, opts, cfg.activation)

    @classmethod
    def stand_in_config(cls, cfg: RunConfig) -> RunConfig:
        """--auto-anchors fits --num-anchors anchors later; stand-ins give the same shapes before that."""
        if cfg.anchors or not cfg.auto_anchors:
            return cfg
        return cfg.model_copy(update={"anchors": ((0.1, 0.1),) * cfg.num_anchors})

    @classmethod
    def prepare_config(cls, cfg: RunConfig, train_boxes: Sequence[np.ndarray]) -> RunConfig:
        """--auto-anchors without --anchors: fit --num-anchors to the training boxes (the anchor head's fit)."""
        return fit_config_anchors(cfg, train_boxes) if cfg.auto_anchors and not cfg.anchors else cfg

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.context(features)
        x = x + self.context_res(x)
        if self.lob is not None:
            x = x + self.lob(x)
        out = {"box": self.box_tower(x), "obj": self.obj_tower(x), "quality": self.quality_tower(x)}
        if self.cls_tower is not None:
            out["cls"] = self.cls_tower(x)
        return out

    def effective_anchors(self) -> torch.Tensor:
        """(A, 2) normalized w, h: anchors x the learned wh_scale."""
        return self.anchors * self.wh_scale

    # -- targets --------------------------------------------------------------------------------
    def build_targets(self, boxes: torch.Tensor, labels: torch.Tensor, feature_hw: tuple[int, int]) -> dict[str, Any]:
        """boxes (B, M, 4) cxcywh normalized, labels (B, M) (-1 = padding) -> one positive per box:

        ``idx`` (B, M) flat anchor-cell row k*H*W + y*W + x, ``box`` (B, M, 4) target cx, cy, w, h in
        cells, ``cls`` (B, M), ``mask`` (B, M) bool (a real box). Two boxes on the same row both stay
        (box and class terms); the IoU map takes the larger of their IoUs.
        """
        fh, fw = feature_hw
        boxes = boxes.float()
        valid = labels >= 0
        anchors = self.effective_anchors().detach().to(boxes.device)  # (A, 2)
        bwh = boxes[..., 2:4].clamp(min=1e-6)
        inter = torch.minimum(bwh[:, :, None, :], anchors[None, None]).prod(-1)  # (B, M, A)
        union = bwh.prod(-1)[..., None] + anchors.prod(-1)[None, None] - inter
        best = (inter / union).argmax(-1)  # (B, M)
        cx, cy = boxes[..., 0] * fw, boxes[..., 1] * fh
        gx, gy = cx.floor().clamp(0, fw - 1), cy.floor().clamp(0, fh - 1)
        idx = best * (fh * fw) + (gy * fw + gx).long()
        idx = torch.where(valid, idx, torch.zeros_like(idx))
        box = torch.stack([cx, cy, bwh[..., 0] * fw, bwh[..., 1] * fh], dim=-1)
        return {"idx": idx, "box": box, "cls": labels.clamp(min=0), "mask": valid, "feature_hw": (fh, fw)}

    # -- loss -----------------------------------------------------------------------------------
    def _fields(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Raw outputs -> per anchor-cell rows (B, A*H*W, ...), row k*H*W + y*W + x."""
        box = outputs["box"].float()
        b, _, h, w = box.shape
        a = self.num_anchors
        rows = {"box": box.view(b, a, 4, h, w).permute(0, 1, 3, 4, 2).reshape(b, a * h * w, 4),
                "obj": outputs["obj"].float().reshape(b, a * h * w),
                "quality": outputs["quality"].float().reshape(b, a * h * w)}
        if self.cls_out:
            c = self.cls_out
            rows["cls"] = outputs["cls"].float().view(b, a, c, h, w).permute(0, 1, 3, 4, 2).reshape(b, a * h * w, c)
        return rows

    def _positive_ciou(self, rows: dict[str, torch.Tensor], targets: dict[str, Any]) -> torch.Tensor:
        """CIoU (B, M) of each positive's decoded box against its target box (both in cells)."""
        fh, fw = targets["feature_hw"]
        idx = targets["idx"]
        t = rows["box"].gather(1, idx[..., None].expand(-1, -1, 4))  # (B, M, 4)
        cell = idx % (fh * fw)
        gx = (cell % fw).to(t.dtype)
        gy = torch.div(cell, fw, rounding_mode="floor").to(t.dtype)
        anchor_wh = self.effective_anchors()[torch.div(idx, fh * fw, rounding_mode="floor")]  # (B, M, 2)
        scale = torch.tensor([fw, fh], dtype=t.dtype, device=t.device)
        pbox = torch.cat([torch.sigmoid(t[..., :1]) + gx[..., None], torch.sigmoid(t[..., 1:2]) + gy[..., None],
                          F.softplus(t[..., 2:4]) * anchor_wh * scale], dim=-1)
        return bbox_iou(pbox, targets["box"], "ciou")

    def iou_targets(self, outputs: dict[str, torch.Tensor],
                    targets: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (CIoU (B, M) at the positives, with gradient; the quality/objectness target (B, A*H*W):
        the detached CIoU clamped to 0..1 at each positive's row, 0 elsewhere)."""
        rows = self._fields(outputs)
        ciou = self._positive_ciou(rows, targets)
        iou_t = ciou.detach().clamp(0, 1) * targets["mask"].to(ciou.dtype)
        return ciou, torch.zeros_like(rows["obj"]).scatter_reduce(1, targets["idx"], iou_t, "amax")

    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        rows = self._fields(outputs)
        mask = targets["mask"].float()
        num = mask.sum().clamp(min=1.0)
        ciou, iou_map = self.iou_targets(outputs, targets)
        box_loss = ((1 - ciou) * mask).sum() / num
        # Quality and objectness learn how good the positive's own box is, not just "a person is here".
        qual_loss = F.binary_cross_entropy_with_logits(rows["quality"], iou_map)
        obj_loss = F.binary_cross_entropy_with_logits(rows["obj"], iou_map)
        o = self.opts
        total = o.w_box * box_loss + o.w_obj * obj_loss + o.w_qual * qual_loss
        terms = {"box": box_loss, "obj": obj_loss, "qual": qual_loss}
        if self.cls_out:
            picked = rows["cls"].gather(1, targets["idx"][..., None].expand(-1, -1, self.cls_out))
            onehot = F.one_hot(targets["cls"], self.cls_out).to(picked.dtype)
            bce = F.binary_cross_entropy_with_logits(picked, onehot, reduction="none").mean(-1)
            terms["cls"] = (bce * mask).sum() / num
            total = total + o.w_cls * terms["cls"]
        return {"loss": total, **terms}

    # -- decoding -------------------------------------------------------------------------------
    def decode_boxes(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """All predictions: boxes (B, A*H*W, 4) normalized cxcywh and scores (B, A*H*W, C); traceable
        (the grid comes from the traced shape, no Reshape with sizes)."""
        box = outputs["box"].float()
        field = [box[:, i::4] for i in range(4)]  # (B, A, H, W) each
        shape = torch._shape_as_tensor(box)
        fh, fw = shape[2], shape[3]
        gy = torch.arange(fh, device=box.device).to(box.dtype)[:, None]
        gx = torch.arange(fw, device=box.device).to(box.dtype)[None, :]
        # detached: decoding is not trained, and a constant traces as one initializer
        anchors = self.effective_anchors().detach().to(box.dtype)[None, :, None, None, :]  # (1, A, 1, 1, 2)
        coords = [(torch.sigmoid(field[0]) + gx) / fw.to(box.dtype), (torch.sigmoid(field[1]) + gy) / fh.to(box.dtype),
                  F.softplus(field[2]) * anchors[..., 0], F.softplus(field[3]) * anchors[..., 1]]
        boxes = torch.stack([v.flatten(1) for v in coords], dim=-1)  # (B, A*H*W, 4)
        score = torch.sigmoid(outputs["quality"].float())
        if self.opts.quality_power != 1.0:
            score = score ** self.opts.quality_power
        if self.opts.score == "obj_quality":
            score = torch.sigmoid(outputs["obj"].float()) * score
        if self.cls_out:
            c = self.cls_out
            cls = torch.stack([torch.sigmoid(outputs["cls"].float()[:, i::c]) for i in range(c)], dim=-1)
            scores = (score[..., None] * cls).flatten(1, 3)  # (B, A*H*W, C)
        else:
            scores = score.flatten(1)[..., None]
        return boxes, scores

    def decode(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        """-> (B, K, 6) score, class, cx, cy, w, h (class-aware Fast NMS, see heads.anchor.fast_nms)."""
        boxes, scores = self.decode_boxes(outputs)
        n = self.opts.nms_candidates
        if n:  # keep the n best anchor-cells (by their best class) before the (n x n) suppression
            _, rows = scores.amax(-1).topk(traced_min(scores[..., 0], n, 1), dim=1)  # (B, P)
            boxes = boxes.gather(1, rows[..., None].expand(-1, -1, 4))
            scores = scores.gather(1, rows[..., None].expand(-1, -1, scores.shape[-1]))
        return fast_nms(boxes, scores.flatten(1), scores.shape[-1], topk, NMS_IOU)

    def export_postprocess(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        return self.decode(outputs, topk)
