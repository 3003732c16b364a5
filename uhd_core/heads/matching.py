"""One-to-one matching of predictions (queries) to targets for set-prediction losses.

Cost matrices are built for the whole batch with tensor ops (``pairwise_match_cost``); only the
assignment itself runs per image, on the CPU, with scipy's ``linear_sum_assignment`` (the
Jonker-Volgenant solver for rectangular problems). The original tool matched greedily (cheapest
pair first); measured on the dev data that was no better (same best mAP@0.5 at 30 epochs, 0.040 vs
0.054 over the last five evaluations, docs/measurements.md), so only the optimal assignment is kept.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from uhd_core.heads.box_iou import IouKind, bbox_iou

def pairwise_match_cost(class_prob: torch.Tensor, pred_boxes: torch.Tensor, gt_boxes: torch.Tensor,
                        gt_labels: torch.Tensor, *, cls_weight: float, l1_weight: float, iou_weight: float,
                        iou_kind: IouKind = "giou") -> torch.Tensor:
    """DETR matching cost for every (query, target) pair of every image.

    class_prob (B, Q, C') probabilities (C' >= number of classes; a no-object column is ignored),
    pred_boxes (B, Q, 4) and gt_boxes (B, M, 4) cxcywh normalized, gt_labels (B, M) with -1 padding.
    Returns (B, Q, M): ``-cls_weight * p(label) + l1_weight * L1 + iou_weight * (1 - IoU)``
    (IoU of ``iou_kind``). Padding columns hold finite values; the caller masks them out.
    """
    labels = gt_labels.clamp(min=0)
    prob_of_label = torch.gather(class_prob, 2, labels[:, None, :].expand(-1, class_prob.shape[1], -1))
    l1 = torch.cdist(pred_boxes.float(), gt_boxes.float(), p=1)
    iou = bbox_iou(pred_boxes[:, :, None, :].float(), gt_boxes[:, None, :, :].float(), iou_kind)
    return -cls_weight * prob_of_label.float() + l1_weight * l1 + iou_weight * (1.0 - iou)


def match_queries(cost: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Assign targets to queries one-to-one, image by image.

    cost (B, Q, M), valid (B, M) bool. Returns flat index tensors (batch_idx, query_idx, target_idx)
    of equal length (the number of matched pairs, min(Q, valid targets) per image), on ``cost``'s
    device. One device->host copy for the whole batch.
    """
    cost_np = cost.detach().float().cpu().numpy()
    valid_np = valid.cpu().numpy()
    batch_idx, query_idx, target_idx = [], [], []
    for b in range(cost_np.shape[0]):
        cols = np.flatnonzero(valid_np[b])
        if len(cols) == 0:
            continue
        rows, matched = linear_sum_assignment(cost_np[b][:, cols])
        batch_idx.append(np.full(len(rows), b, dtype=np.int64))
        query_idx.append(np.asarray(rows, dtype=np.int64))
        target_idx.append(cols[matched])
    if not batch_idx:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty, empty
    return tuple(torch.from_numpy(np.concatenate(x)).to(cost.device) for x in (batch_idx, query_idx, target_idx))
