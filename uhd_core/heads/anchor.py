"""YOLO-style anchor head: per cell and anchor, objectness + class logits + a box regressed
against the anchor; IoU-family box loss; decoded by top-k and a vectorized class-aware Fast NMS.

Two assignment rules (``--anchor-assign``), each with its own box parametrisation, because the
target offsets each rule produces must be reachable by the decoder:

- ``best`` (the original tool): every box goes to the cell holding its centre and to the one anchor
  with the highest (w, h) IoU. Decoding: ``cx = (sigmoid(tx) + gx) / W``,
  ``w = anchor_w * exp(min(tw, 4))`` (YOLOv2/v3).
- ``yolov5``: every anchor whose worst side ratio ``max(w/aw, aw/w, h/ah, ah/h) < ANCHOR_T`` (4),
  in the centre cell and in the two nearest neighbouring cells (so the centre offset lies in
  (-0.5, 1.5)). Decoding: ``cx = (2 * sigmoid(tx) - 0.5 + gx) / W``,
  ``w = anchor_w * (2 * sigmoid(tw))^2`` (sizes bounded to 0..4x the anchor, YOLOv5).

Targets are a flat, padded list of (box, anchor, cell) positives per image built with tensor ops
only (no per-box Python loop): B x M boxes x K anchors x 5 candidate cells, masked. Two boxes that
land on the same cell and anchor both contribute to the box/class terms (no tie-breaking).

Loss (weights below, not tuned): ``obj`` = BCE over every cell and anchor (target 1 at positives,
0 elsewhere; plain, not IoU-aware), mean over cells; ``cls`` = BCE on positives; ``box`` =
1 - IoU/GIoU/CIoU (``--iou-loss``) on positives, boxes compared in grid-cell units (square
cells, so CIoU's aspect term sees the true aspect ratio).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from uhd_core.anchors import box_sizes, fit_anchors
from uhd_core.config import RunConfig
from uhd_core.errors import ConfigError, DataError
from uhd_core.heads.base import HEADS, DetectorHead
from uhd_core.heads.box_iou import bbox_iou
from uhd_core.heads.tracing import traced_min
from uhd_core.layers.blocks import ConvBNAct

#: YOLOv5's anchor_t: an anchor matches a box when no side differs by this factor or more.
ANCHOR_T = 4.0
#: Loss weights of the three terms (total = sum of weight * term).
OBJ_WEIGHT = 1.0
CLS_WEIGHT = 0.5
BOX_WEIGHT = 1.0
#: Fast-NMS IoU threshold and how many top-scoring candidates per image it considers (x topk).
NMS_IOU = 0.5
NMS_CANDIDATES_PER_DET = 4
#: Upper clamp of tw before exp() in the 'best' parametrisation (e^4 ~ 55x the anchor).
MAX_LOG_SCALE = 4.0
#: Neighbour-cell offsets (x, y) of the yolov5 rule: centre, left, up, right, down.
_OFFSETS = ((0, 0), (-1, 0), (0, -1), (1, 0), (0, 1))


@HEADS.register("anchor")
class AnchorHead(DetectorHead):
    """Output ``pred`` (B, K*(5+C), H, W); channel block k holds anchor k's
    tx, ty, tw, th, obj, cls_0..cls_{C-1} logits."""

    loss_terms = ("obj", "cls", "box")
    output_names = ("pred",)
    grid = True
    #: anchors are built into the layer's shape (--auto-anchors would fit them from data first)
    smoke_config = MappingProxyType({"anchors": "0.1,0.2 0.3,0.4 0.6,0.7"})

    def __init__(self, in_channels: int, num_classes: int, anchors: torch.Tensor | list, assign: str = "best",
                 iou_loss: str = "giou", head_conv: int = 0, activation: str = "swish") -> None:
        super().__init__()
        anchors = torch.as_tensor(anchors, dtype=torch.float32).reshape(-1, 2)
        if anchors.numel() == 0 or not bool((anchors > 0).all()):
            raise ConfigError("the anchor head needs positive anchors: pass --anchors 'w,h ...' or --auto-anchors")
        if assign not in ("best", "yolov5"):
            raise ConfigError(f"--anchor-assign must be 'best' or 'yolov5', got {assign!r}")
        self.num_classes = num_classes
        self.num_anchors = int(anchors.shape[0])
        self.assign = assign
        self.iou_loss = iou_loss
        self.register_buffer("anchors", anchors)  # (K, 2) normalized w, h
        self.stem = ConvBNAct(in_channels, head_conv, 3, 1, activation) if head_conv > 0 else nn.Identity()
        in_channels = head_conv if head_conv > 0 else in_channels
        self.pred = nn.Conv2d(in_channels, self.num_anchors * (5 + num_classes), 1)
        # Objectness starts at p = 0.01 (almost every cell is background); classes at p = 0.5.
        with torch.no_grad():
            bias = self.pred.bias.view(self.num_anchors, 5 + num_classes)
            bias.zero_()
            bias[:, 4] = -math.log((1 - 0.01) / 0.01)

    @classmethod
    def from_config(cls, cfg: RunConfig, in_channels: int) -> AnchorHead:
        if not cfg.anchors:
            raise ConfigError("--use-anchor needs anchors: pass --anchors 'w,h w,h ...' or --auto-anchors")
        return cls(in_channels, cfg.num_classes, list(cfg.anchors), cfg.anchor_assign, cfg.iou_loss, cfg.head_conv,
                   cfg.activation)

    @classmethod
    def stand_in_config(cls, cfg: RunConfig) -> RunConfig:
        """Anchors fitted later (--auto-anchors) only set values: stand-ins give the same shapes."""
        return cfg if cfg.anchors else cfg.model_copy(update={"anchors": ((0.1, 0.1),) * cfg.num_anchors})

    @classmethod
    def prepare_config(cls, cfg: RunConfig, train_boxes: Sequence[np.ndarray]) -> RunConfig:
        """--auto-anchors without --anchors: fit them to the training split's boxes (see fit_config_anchors)."""
        return cfg if cfg.anchors else fit_config_anchors(cfg, train_boxes)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pred": self.pred(self.stem(features))}

    # -- layout helpers -------------------------------------------------------------------------
    def _cells(self, pred: torch.Tensor) -> torch.Tensor:
        """(B, K*(5+C), H, W) -> (B, K*H*W, 5+C), row index k*H*W + y*W + x."""
        b, _, h, w = pred.shape
        return pred.float().view(b, self.num_anchors, 5 + self.num_classes, h, w).permute(0, 1, 3, 4, 2) \
            .reshape(b, self.num_anchors * h * w, 5 + self.num_classes)

    def _decode_xywh(self, t: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor, anchor_wh: torch.Tensor,
                     feature_hw: tuple[int, int]) -> torch.Tensor:
        """Raw tx, ty, tw, th (..., 4) at cells gx, gy with anchors (..., 2) -> cx, cy, w, h in cells."""
        fh, fw = feature_hw
        if self.assign == "yolov5":
            xy = 2 * torch.sigmoid(t[..., :2]) - 0.5
            wh = (2 * torch.sigmoid(t[..., 2:4])) ** 2
        else:
            xy = torch.sigmoid(t[..., :2])
            wh = torch.exp(t[..., 2:4].clamp(max=MAX_LOG_SCALE))
        scale = torch.tensor([fw, fh], dtype=t.dtype, device=t.device)
        return torch.cat([xy[..., :1] + gx[..., None], xy[..., 1:] + gy[..., None], wh * anchor_wh * scale], dim=-1)

    # -- targets --------------------------------------------------------------------------------
    def build_targets(self, boxes: torch.Tensor, labels: torch.Tensor, feature_hw: tuple[int, int]) -> dict[str, Any]:
        """Returns, for N = M * K * (1 or 5) candidate positives per image:

        ``idx`` (B, N) flat row k*H*W + y*W + x, ``box`` (B, N, 4) target cx, cy, w, h in cells,
        ``cls`` (B, N) class id, ``mask`` (B, N) bool (real positive), ``obj`` (B, K*H*W) 0/1.
        """
        fh, fw = feature_hw
        b, m = labels.shape
        k = self.num_anchors
        boxes = boxes.float()
        valid = labels >= 0  # (B, M)
        anchors = self.anchors.to(boxes.device)
        bwh = boxes[..., 2:4].clamp(min=1e-6)  # (B, M, 2)
        if self.assign == "yolov5":
            r = bwh[:, :, None, :] / anchors[None, None]  # (B, M, K, 2)
            anchor_ok = torch.maximum(r, 1 / r).amax(-1) < ANCHOR_T  # (B, M, K)
            offsets = _OFFSETS
        else:
            inter = torch.minimum(bwh[:, :, None, :], anchors[None, None]).prod(-1)
            union = bwh.prod(-1)[..., None] + anchors.prod(-1)[None, None] - inter
            best = (inter / union).argmax(-1)  # (B, M)
            anchor_ok = F.one_hot(best, k).bool() if m else torch.zeros(b, 0, k, dtype=torch.bool,
                                                                         device=boxes.device)
            offsets = _OFFSETS[:1]
        cx = boxes[..., 0] * fw
        cy = boxes[..., 1] * fh
        gx = cx.floor().clamp(0, fw - 1)
        gy = cy.floor().clamp(0, fh - 1)
        fx, fy = cx - gx, cy - gy
        off = torch.tensor(offsets, dtype=boxes.dtype, device=boxes.device)  # (O, 2)
        # which neighbour cells a box uses (yolov5): the two nearest, inside the grid
        cell_ok = torch.stack([
            torch.ones_like(valid),
            (fx < 0.5) & (gx >= 1),
            (fy < 0.5) & (gy >= 1),
            (fx > 0.5) & (gx <= fw - 2),
            (fy > 0.5) & (gy <= fh - 2),
        ][: len(offsets)], dim=-1)  # (B, M, O)
        cgx = gx[..., None] + off[:, 0]  # (B, M, O)
        cgy = gy[..., None] + off[:, 1]
        anchor_ids = torch.arange(k, device=boxes.device)
        # (B, M, K, O)
        mask = valid[:, :, None, None] & anchor_ok[..., None] & cell_ok[:, :, None, :]
        idx = anchor_ids[None, None, :, None] * (fh * fw) + (cgy * fw + cgx).long()[:, :, None, :]
        target_box = torch.stack([cx, cy, bwh[..., 0] * fw, bwh[..., 1] * fh], dim=-1)  # (B, M, 4)
        n_per = k * len(offsets)
        idx = torch.where(mask, idx, torch.zeros_like(idx)).reshape(b, m * n_per)
        mask = mask.reshape(b, m * n_per)
        box = target_box[:, :, None, :].expand(b, m, n_per, 4).reshape(b, m * n_per, 4)
        cls = labels.clamp(min=0)[:, :, None].expand(b, m, n_per).reshape(b, m * n_per)
        obj = torch.zeros(b, k * fh * fw, device=boxes.device).scatter_reduce(1, idx, mask.float(), "amax")
        return {"idx": idx, "box": box, "cls": cls, "mask": mask, "obj": obj, "feature_hw": (fh, fw)}

    # -- loss -----------------------------------------------------------------------------------
    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        cells = self._cells(outputs["pred"])  # (B, KHW, 5+C)
        fh, fw = targets["feature_hw"]
        obj_loss = F.binary_cross_entropy_with_logits(cells[..., 4], targets["obj"])
        idx = targets["idx"]
        mask = targets["mask"].float()
        num = mask.sum().clamp(min=1.0)
        picked = cells.gather(1, idx[..., None].expand(-1, -1, cells.shape[-1]))  # (B, N, 5+C)
        cell = idx % (fh * fw)
        gx = (cell % fw).to(cells.dtype)
        gy = torch.div(cell, fw, rounding_mode="floor").to(cells.dtype)
        anchor_wh = self.anchors[torch.div(idx, fh * fw, rounding_mode="floor")]  # (B, N, 2)
        pbox = self._decode_xywh(picked[..., :4], gx, gy, anchor_wh, (fh, fw))
        box_loss = ((1 - bbox_iou(pbox, targets["box"], self.iou_loss)) * mask).sum() / num
        onehot = F.one_hot(targets["cls"], self.num_classes).to(cells.dtype)
        cls_bce = F.binary_cross_entropy_with_logits(picked[..., 5:], onehot, reduction="none").mean(-1)
        cls_loss = (cls_bce * mask).sum() / num
        total = OBJ_WEIGHT * obj_loss + CLS_WEIGHT * cls_loss + BOX_WEIGHT * box_loss
        return {"loss": total, "obj": obj_loss, "cls": cls_loss, "box": box_loss}

    # -- decoding -------------------------------------------------------------------------------
    def decode_boxes(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """All predictions: boxes (B, K*H*W, 4) normalized cxcywh and class scores (B, K*H*W, C)."""
        pred = outputs["pred"]
        fh, fw = int(pred.shape[-2]), int(pred.shape[-1])
        cells = self._cells(pred)
        n = fh * fw
        rows = torch.arange(self.num_anchors * n, device=pred.device)
        gx = (rows % fw).to(cells.dtype)
        gy = torch.div(rows % n, fw, rounding_mode="floor").to(cells.dtype)
        anchor_wh = self.anchors.repeat_interleave(n, dim=0)  # (K*H*W, 2)
        box = self._decode_xywh(cells[..., :4], gx, gy, anchor_wh, (fh, fw))
        box = box / torch.tensor([fw, fh, fw, fh], dtype=box.dtype, device=box.device)
        scores = torch.sigmoid(cells[..., 4:5]) * torch.sigmoid(cells[..., 5:])
        return box, scores

    def decode(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        box, scores = self.decode_boxes(outputs)
        return decode_anchor(box, scores, topk)

    def export_postprocess(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        """decode() reformulated for dynamic-shape export (tests check both give the same rows)."""
        return decode_anchor_traceable(self, outputs["pred"], topk)


def decode_anchor(box: torch.Tensor, scores: torch.Tensor, topk: int, nms_iou: float = NMS_IOU) -> torch.Tensor:
    """box (B, N, 4) cxcywh, scores (B, N, C) -> (B, K, 6) score, class, cx, cy, w, h (``fast_nms``)."""
    b, n, c = scores.shape
    return fast_nms(box, scores.reshape(b, n * c), c, topk, nms_iou)


def fast_nms(box: torch.Tensor, flat_scores: torch.Tensor, num_classes: int, topk: int,
             nms_iou: float = NMS_IOU) -> torch.Tensor:
    """box (B, N, 4) cxcywh, flat_scores (B, N*C) at index row*C + class -> (B, K, 6) score, class, cx,
    cy, w, h by descending score; K = min(topk, min(N*C, NMS_CANDIDATES_PER_DET * topk)).

    Top ``NMS_CANDIDATES_PER_DET * topk`` (box, class) pairs, then class-aware *Fast NMS* (YOLACT):
    a candidate is dropped when a higher-scoring candidate of the same class overlaps it by IoU >
    nms_iou — even if that one was itself dropped, so it can suppress slightly more than greedy NMS,
    but it is one batched matrix op with no data-dependent loop. Candidate counts come from
    ``traced_min`` and the "higher-scoring" mask from candidate positions, so one implementation
    serves eager decoding and dynamic-shape export (sizes stay symbolic while tracing).
    """
    cand_scores, flat = flat_scores.topk(traced_min(flat_scores, NMS_CANDIDATES_PER_DET * topk, 1), dim=1)
    cls = flat % num_classes
    loc = torch.div(flat, num_classes, rounding_mode="floor")
    cand_box = box.gather(1, loc[..., None].expand(-1, -1, 4))  # (B, P, 4), sorted by score
    iou = bbox_iou(cand_box[:, :, None, :], cand_box[:, None, :, :], "iou")  # (B, P, P)
    same = cls[:, :, None] == cls[:, None, :]
    pos = torch.arange(torch._shape_as_tensor(cand_scores)[1], device=box.device)
    higher = pos[:, None] < pos[None, :]  # row j suppresses column i > j (candidates are sorted)
    suppressed = ((iou > nms_iou) & same & higher).any(dim=1)  # (B, P)
    kept = cand_scores * (~suppressed).to(cand_scores.dtype)
    out_scores, order = kept.topk(traced_min(kept, topk, 1), dim=1)
    out_cls = cls.gather(1, order).to(box.dtype)
    out_box = cand_box.gather(1, order[..., None].expand(-1, -1, 4))
    return torch.cat([out_scores[..., None], out_cls[..., None], out_box], dim=-1)


def decode_anchor_traceable(head: AnchorHead, pred: torch.Tensor, topk: int, nms_iou: float = NMS_IOU) -> torch.Tensor:
    """pred (B, K*(5+C), H, W) -> (B, N, 6); the math of AnchorHead.decode_boxes + decode_anchor.

    Grid coordinates come from the traced shape, so H and W stay symbolic; the NMS is ``fast_nms``.
    N = min(topk, min(K*H*W*C, 4*topk)).
    """
    c = head.num_classes
    pred = pred.float()
    # Fields are strided channel slices (B, K, H, W) and rows come from Flatten(axis=1): no Reshape
    # with sizes, which the TorchScript exporter constant-folds to the export shape.
    field = [pred[:, i:: 5 + c] for i in range(5 + c)]  # channel k*(5+C)+i = anchor k's field i
    shape = torch._shape_as_tensor(pred)
    fh, fw = shape[2], shape[3]
    gy = torch.arange(fh, device=pred.device).to(pred.dtype)[:, None]  # (H, 1)
    gx = torch.arange(fw, device=pred.device).to(pred.dtype)[None, :]  # (1, W)
    if head.assign == "yolov5":
        px, py = 2 * torch.sigmoid(field[0]) - 0.5, 2 * torch.sigmoid(field[1]) - 0.5
        pw, ph = (2 * torch.sigmoid(field[2])) ** 2, (2 * torch.sigmoid(field[3])) ** 2
    else:
        px, py = torch.sigmoid(field[0]), torch.sigmoid(field[1])
        pw, ph = torch.exp(field[2].clamp(max=MAX_LOG_SCALE)), torch.exp(field[3].clamp(max=MAX_LOG_SCALE))
    anchors = head.anchors.to(pred.dtype)[None, :, None, None, :]  # (1, K, 1, 1, 2)
    coords = [(px + gx) / fw.to(pred.dtype), (py + gy) / fh.to(pred.dtype), pw * anchors[..., 0], ph * anchors[..., 1]]
    box = torch.stack([v.flatten(1) for v in coords], dim=-1)  # (B, K*H*W, 4), row k*H*W + y*W + x
    cls_prob = torch.stack([torch.sigmoid(f) for f in field[5:]], dim=-1)  # (B, K, H, W, C)
    flat_scores = (torch.sigmoid(field[4])[..., None] * cls_prob).flatten(1)  # (B, K*H*W*C), row*C + class
    return fast_nms(box, flat_scores, c, topk, nms_iou)


def fit_config_anchors(cfg: RunConfig, train_boxes: Sequence[np.ndarray]) -> RunConfig:
    """--auto-anchors: k-means + evolution on the training split's boxes (per image (M, 4) cxcywh
    normalized); the anchors are stored in the config (and so in config.yaml and every checkpoint),
    which resume then reuses as is. Explicit --anchors win: the caller fits only when the config holds none."""
    wh = box_sizes(train_boxes)
    if len(wh) == 0:
        raise DataError("--auto-anchors: the training split has no boxes to fit anchors to")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct sizes than anchors: fit_anchors returns fewer
        anchors = fit_anchors(wh, cfg.num_anchors, seed=cfg.seed)
    return cfg.model_copy(update={"anchors": tuple((float(w), float(h)) for w, h in anchors), "auto_anchors": False})
