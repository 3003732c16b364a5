"""PASCAL VOC (2010+) mAP at one IoU threshold with all-point interpolation (rules: :mod:`uhd_core.metrics.ap`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from uhd_core.metrics.matching import _pr_curve, _voc_best_matches, _voc_tp, pr_arrays
from uhd_core.metrics.records import ImageDetections, ImageGroundTruth, MapResult, _check_inputs, _num_gt


def voc_ap_all_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2010+ all-point interpolated AP.

    ``recall`` (non-decreasing) and ``precision`` are the cumulative curve over the
    ranked detections.  Sentinels (recall 0 / precision 0 at the start, recall 1 /
    precision 0 at the end) are added, precision is made monotonically
    non-increasing from the right, and the area is ``sum(Δrecall × precision)``.
    An empty curve gives 0.0.
    """
    rec, prec = pr_arrays(recall, precision)
    if rec.size == 0:
        return 0.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def evaluate_voc_map(
    dets: Sequence[ImageDetections],
    gts: Sequence[ImageGroundTruth],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> MapResult:
    """PASCAL VOC mAP at ``iou_threshold`` (all-point interpolation). See :mod:`uhd_core.metrics.ap`."""
    _check_inputs(dets, gts, num_classes)
    counts = _num_gt(gts, num_classes)
    scores, labels, best_iou, best_gid = _voc_best_matches(dets, gts)

    per_class: dict[int, float] = {}
    ranked_scores, ranked_tp = [], []
    for c in range(num_classes):
        n_gt = int(counts[c])
        if n_gt == 0:
            continue
        sel = np.nonzero(labels == c)[0]
        if sel.size == 0:
            per_class[c] = 0.0
            continue
        order = sel[np.argsort(-scores[sel], kind="stable")]
        is_tp = _voc_tp(best_iou[order], best_gid[order], iou_threshold)
        rec, prec = _pr_curve(is_tp, n_gt)
        per_class[c] = voc_ap_all_point(rec, prec)
        ranked_scores.append(scores[order])
        ranked_tp.append(is_tp)

    mean = float(np.mean(list(per_class.values()))) if per_class else 0.0
    pooled_scores = np.concatenate(ranked_scores) if ranked_scores else np.zeros(0)
    pooled_tp = np.concatenate(ranked_tp) if ranked_tp else np.zeros(0, dtype=bool)
    rank = np.argsort(-pooled_scores, kind="stable")
    return MapResult(
        map=mean,
        per_class=per_class,
        num_gt={c: int(counts[c]) for c in range(num_classes)},
        iou_threshold=float(iou_threshold),
        ranked_scores=pooled_scores[rank],
        ranked_tp=pooled_tp[rank],
    )
