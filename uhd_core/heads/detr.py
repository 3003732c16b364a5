"""DETR set-prediction head: per query, class logits (num_classes + no-object) and a box.

Loss (Carion et al. 2020): match queries one-to-one to targets (Hungarian on a cost of class
probability + L1 + (1 - IoU), heads/matching.py), then

- ``cls``: cross-entropy over all queries; matched -> target class, the rest -> no-object, whose
  class weight is ``no_object_weight`` (0.1) so the ~9-of-10 empty queries do not drown the rest;
- ``l1``: L1 of matched boxes (cxcywh normalized), summed over coordinates, per target;
- ``iou``: 1 - IoU (or GIoU / CIoU by ``--iou-loss``) of matched boxes, per target;
- ``loss`` = cls_weight * cls + l1_weight * l1 + iou_weight * iou (the same weights as the matching cost).

An image without boxes contributes only no-object terms.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from uhd_core.config import RunConfig
from uhd_core.heads.base import HEADS, DetectorHead
from uhd_core.heads.box_iou import bbox_iou
from uhd_core.heads.matching import match_queries, pairwise_match_cost
from uhd_core.heads.tracing import traced_min


@HEADS.register("detr")
class DetrHead(DetectorHead):
    """Input: query features (B, Q, D). Outputs:

    - ``logits`` (B, Q, C + 1): class logits, the last column is "no object";
    - ``boxes`` (B, Q, 4): sigmoid cx, cy, w, h normalized to the image.
    """

    loss_terms = ("cls", "l1", "iou")
    output_names = ("logits", "boxes")
    grid = False  # set prediction of normalized boxes: any input size

    def __init__(self, in_channels: int, num_classes: int, *, cls_weight: float = 1.0, l1_weight: float = 5.0,
                 iou_weight: float = 2.0, no_object_weight: float = 0.1, iou_kind: str = "giou") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_embed = nn.Linear(in_channels, num_classes + 1)
        self.bbox_embed = nn.Sequential(
            nn.Linear(in_channels, in_channels), nn.ReLU(), nn.Linear(in_channels, in_channels), nn.ReLU(),
            nn.Linear(in_channels, 4),
        )
        self.cls_weight, self.l1_weight, self.iou_weight = cls_weight, l1_weight, iou_weight
        self.iou_kind = iou_kind
        class_weights = torch.ones(num_classes + 1)
        class_weights[-1] = no_object_weight
        self.register_buffer("class_weights", class_weights, persistent=False)

    @classmethod
    def from_config(cls, cfg: RunConfig, in_channels: int) -> DetrHead:
        return cls(in_channels, cfg.num_classes, cls_weight=cfg.detr_cls_weight, l1_weight=cfg.detr_l1_weight,
                   iou_weight=cfg.detr_iou_weight, no_object_weight=cfg.detr_no_object_weight,
                   iou_kind=cfg.iou_loss)

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.class_embed(features), "boxes": self.bbox_embed(features).sigmoid()}

    def output_hw(self, outputs: dict[str, torch.Tensor]) -> tuple[int, int]:
        return (1, 1)  # set prediction: targets do not depend on a grid

    def build_targets(self, boxes: torch.Tensor, labels: torch.Tensor, feature_hw: tuple[int, int]) -> dict[str, Any]:
        """Targets are the padded boxes (B, M, 4) cxcywh and labels (B, M) (-1 = padding) as given."""
        return {"boxes": boxes, "labels": labels}

    def match(self, outputs: dict[str, torch.Tensor], gt_boxes: torch.Tensor, gt_labels: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch_idx, query_idx, target_idx) of the one-to-one assignment (no gradient)."""
        with torch.no_grad():
            prob = outputs["logits"].float().softmax(-1)
            cost = pairwise_match_cost(prob, outputs["boxes"].float(), gt_boxes, gt_labels,
                                       cls_weight=self.cls_weight, l1_weight=self.l1_weight,
                                       iou_weight=self.iou_weight, iou_kind=self.iou_kind)
        return match_queries(cost, gt_labels >= 0)

    def loss(self, outputs: dict[str, torch.Tensor], targets: dict[str, Any]) -> dict[str, torch.Tensor]:
        logits = outputs["logits"].float()
        pred_boxes = outputs["boxes"].float()
        gt_boxes, gt_labels = targets["boxes"], targets["labels"]
        b_idx, q_idx, t_idx = self.match(outputs, gt_boxes, gt_labels)

        target_cls = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        target_cls[b_idx, q_idx] = gt_labels[b_idx, t_idx]
        cls_loss = F.cross_entropy(logits.flatten(0, 1), target_cls.flatten(), weight=self.class_weights)

        num_targets = (gt_labels >= 0).sum().clamp(min=1).float()
        matched_pred = pred_boxes[b_idx, q_idx]
        matched_gt = gt_boxes[b_idx, t_idx].float()
        l1_loss = F.l1_loss(matched_pred, matched_gt, reduction="sum") / num_targets
        iou_loss = (1.0 - bbox_iou(matched_pred, matched_gt, self.iou_kind)).sum() / num_targets
        total = self.cls_weight * cls_loss + self.l1_weight * l1_loss + self.iou_weight * iou_loss
        return {"loss": total, "cls": cls_loss, "l1": l1_loss, "iou": iou_loss}

    def decode(self, outputs: dict[str, torch.Tensor], topk: int) -> torch.Tensor:
        """-> (B, min(topk, Q), 6): per query the best real class and its softmax probability as the
        score, sorted by score. No NMS: the one-to-one loss trains queries not to duplicate."""
        prob = outputs["logits"].float().softmax(-1)[..., : self.num_classes]
        score, cls = prob.max(-1)
        top_score, order = score.topk(traced_min(score, topk, 1), dim=1)
        boxes = outputs["boxes"].float().gather(1, order[..., None].expand(-1, -1, 4))
        return torch.cat([top_score[..., None], cls.gather(1, order)[..., None].to(top_score.dtype), boxes], -1)
