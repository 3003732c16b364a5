"""Matching detections to ground truth: box IoU, the VOC and COCO (pycocotools) rules, PR curves.

The rules themselves are described in :mod:`uhd_core.metrics.ap`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from uhd_core.metrics.records import ImageDetections, ImageGroundTruth, _as_boxes


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` x1y1x2y2 boxes -> ``(N, M)`` float64.

    Degenerate boxes (x2 <= x1 or y2 <= y1) have zero area; a pair whose union is
    zero gets IoU 0.
    """
    a = _as_boxes(a, "a")
    b = _as_boxes(b, "b")
    if a.shape[0] == 0 or b.shape[0] == 0:
        return np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    out = np.zeros_like(inter)
    np.divide(inter, union, out=out, where=union > 0)
    return out


def _voc_best_matches(
    dets: Sequence[ImageDetections], gts: Sequence[ImageGroundTruth]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All detections pooled in image order: (scores (D,), labels (D,), IoU with their best same-class
    GT (D,), that GT's global id (D,)); -1 for both when the image holds no GT of that class.

    With VOC matching the best GT does not depend on the matching state, so it is precomputed.
    """
    scores_l, labels_l, best_iou_l, best_gid_l = [], [], [], []
    gt_offset = 0
    for d, g in zip(dets, gts):
        n, m = d.labels.shape[0], g.labels.shape[0]
        if n:
            best_iou = np.full(n, -1.0)
            best_gid = np.full(n, -1, dtype=np.int64)
            if m:
                iou = box_iou_xyxy(d.boxes, g.boxes)
                iou[d.labels[:, None] != g.labels[None, :]] = -1.0
                j = np.argmax(iou, axis=1)  # first max, as the VOC devkit
                best_iou = iou[np.arange(n), j]
                best_gid = gt_offset + j
            scores_l.append(d.scores)
            labels_l.append(d.labels)
            best_iou_l.append(best_iou)
            best_gid_l.append(best_gid)
        gt_offset += m

    if scores_l:
        scores = np.concatenate(scores_l)
        labels = np.concatenate(labels_l)
        best_iou = np.concatenate(best_iou_l)
        best_gid = np.concatenate(best_gid_l)
    else:
        scores = np.zeros(0)
        labels = np.zeros(0, dtype=np.int64)
        best_iou = np.zeros(0)
        best_gid = np.zeros(0, dtype=np.int64)
    return scores, labels, best_iou, best_gid


def _voc_tp(best_iou: np.ndarray, best_gid: np.ndarray, iou_threshold: float) -> np.ndarray:
    """(D,) TP mask of ranked detections: the first-ranked detection that hits each GT at
    ``iou_threshold``; later hits of the same GT are duplicates (false positives)."""
    hit = best_iou >= iou_threshold
    hit_pos = np.nonzero(hit)[0]
    _, first = np.unique(best_gid[hit_pos], return_index=True)
    is_tp = np.zeros(best_iou.size, dtype=bool)
    is_tp[hit_pos[first]] = True
    return is_tp


def _coco_match_image(iou: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Greedy pycocotools matching in one image/class for all thresholds at once.

    ``iou`` is (D, G) with detections already in score order. Returns (T, D) bool TP mask.
    """
    d_n, g_n = iou.shape
    t_n = thresholds.shape[0]
    tp = np.zeros((t_n, d_n), dtype=bool)
    if d_n == 0 or g_n == 0:
        return tp
    thr = np.minimum(thresholds, 1 - 1e-10)  # pycocotools caps the threshold
    t_min = thr.min()
    matched = np.zeros((t_n, g_n), dtype=bool)
    t_idx = np.arange(t_n)
    row_max = iou.max(axis=1)
    for k in range(d_n):
        if row_max[k] < t_min:  # cannot match anything at any threshold
            continue
        cand = np.where(matched, -1.0, iou[k][None, :])
        # last index attaining the max (pycocotools replaces on ">="), i.e. ties -> later GT
        j = g_n - 1 - np.argmax(cand[:, ::-1], axis=1)
        ok = cand[t_idx, j] >= thr
        matched[t_idx[ok], j[ok]] = True
        tp[:, k] = ok
    return tp


def _pr_curve(is_tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall/precision along the last axis of a ranked TP mask."""
    tp = np.cumsum(is_tp, axis=-1, dtype=np.float64)
    fp = np.cumsum(~is_tp, axis=-1, dtype=np.float64)
    return tp / n_gt, tp / (tp + fp)


def pr_arrays(recall: np.ndarray, precision: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A precision-recall curve as two flat float64 arrays of one length (ValueError otherwise)."""
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.shape} vs {prec.shape}")
    return rec, prec
