"""COCO box mAP as pycocotools' ``COCOeval`` computes it (rules: :mod:`uhd_core.metrics.ap`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from uhd_core.metrics.matching import _coco_match_image, _pr_curve, box_iou_xyxy, pr_arrays
from uhd_core.metrics.records import ImageDetections, ImageGroundTruth, _check_inputs, _num_gt

# Exactly the grids pycocotools uses (np.linspace, not np.arange: arange drifts).
COCO_IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10, endpoint=True)
COCO_RECALL_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101, endpoint=True)


def coco_ap_101_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated AP (as pycocotools' ``accumulate``).

    For each recall threshold r in 0, 0.01, ..., 1 take the maximum precision at
    any rank whose recall is ``>= r`` (0 if recall never reaches r); average.
    """
    rec, prec = pr_arrays(recall, precision)
    if rec.size == 0:
        return 0.0
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    inds = np.searchsorted(rec, COCO_RECALL_THRESHOLDS, side="left")
    q = np.zeros(COCO_RECALL_THRESHOLDS.shape[0], dtype=np.float64)
    ok = inds < rec.size
    q[ok] = prec[inds[ok]]
    return float(q.mean())


def evaluate_coco_map(
    dets: Sequence[ImageDetections],
    gts: Sequence[ImageGroundTruth],
    num_classes: int,
    max_dets: int = 100,
) -> dict:
    """COCO box mAP, equal to pycocotools ``COCOeval`` stats[0..2] (area "all", maxDets 100).

    Returns ``{"map_50_95", "map_50", "map_75"}``.  Classes without ground truth are
    excluded from the means; if no class has ground truth all three are 0.0
    (pycocotools would report -1 there).  See the module doc for matching rules.
    """
    _check_inputs(dets, gts, num_classes)
    counts = _num_gt(gts, num_classes)
    thresholds = COCO_IOU_THRESHOLDS
    t_n = thresholds.shape[0]

    # Per class: lists of (scores, (T, D) tp mask) per image, in image order.
    per_cls_scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    per_cls_tp: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for d, g in zip(dets, gts):
        if d.labels.size == 0:
            continue
        iou_all = box_iou_xyxy(d.boxes, g.boxes) if g.labels.size else None
        for c in np.unique(d.labels):
            c = int(c)
            if counts[c] == 0:
                continue  # class excluded anyway
            di = np.nonzero(d.labels == c)[0]
            di = di[np.argsort(-d.scores[di], kind="stable")][:max_dets]
            if iou_all is None:
                tp = np.zeros((t_n, di.size), dtype=bool)
            else:
                gi = np.nonzero(g.labels == c)[0]
                tp = _coco_match_image(iou_all[np.ix_(di, gi)], thresholds)
            per_cls_scores[c].append(d.scores[di])
            per_cls_tp[c].append(tp)

    ap = {}  # class -> (T,) AP per threshold
    for c in range(num_classes):
        n_gt = int(counts[c])
        if n_gt == 0:
            continue
        if not per_cls_scores[c]:
            ap[c] = np.zeros(t_n)
            continue
        scores = np.concatenate(per_cls_scores[c])
        tp = np.concatenate(per_cls_tp[c], axis=1)
        order = np.argsort(-scores, kind="stable")
        rec, prec = _pr_curve(tp[:, order], n_gt)
        ap[c] = np.array([coco_ap_101_point(rec[t], prec[t]) for t in range(t_n)])

    if not ap:
        return {"map_50_95": 0.0, "map_50": 0.0, "map_75": 0.0}
    table = np.stack(list(ap.values()))  # (C_with_gt, T)
    return {
        "map_50_95": float(table.mean()),
        "map_50": float(table[:, 0].mean()),
        "map_75": float(table[:, 5].mean()),
    }
