"""Average-precision metrics for box detectors (PASCAL VOC and COCO style).

Pure numpy; no torch needed.  Boxes are ``x1y1x2y2`` in any consistent unit
(normalized 0..1 or pixels): IoU is scale invariant, so the unit only has to be
the same for detections and ground truth.

Two evaluators are provided:

* :func:`evaluate_voc_map` -- PASCAL VOC (2010+) mAP at a single IoU threshold
  with all-point interpolation (:func:`voc_ap_all_point`).  Matching follows the
  VOC devkit: each detection (highest score first) looks at *its best-IoU ground
  truth of the same class in the same image*; it is a true positive if that IoU
  is ``>= iou_threshold`` and that ground truth is not matched yet, otherwise a
  false positive (so a duplicate detection on an already-matched box is a false
  positive even if another, less-overlapping box is still free).  Note the VOC
  devkit itself uses a strict ``>``; here the threshold counts (``>=``), the same
  as COCO.

* :func:`evaluate_coco_map` -- COCO box mAP as computed by ``pycocotools``'
  ``COCOeval`` (area range ``"all"``, ``maxDets=100``, no crowd boxes):
  101-point interpolated AP averaged over IoU thresholds 0.50:0.05:0.95.
  Matching uses the pycocotools rule: each detection takes the best-IoU ground
  truth *among those not yet matched* (ties go to the later ground truth, as in
  pycocotools).  As in pycocotools, the 100-detection cap is applied per image
  *and per class* (the top-100-scoring detections of each class in each image).

Detections of all images of a class are ranked together by score, descending,
with a stable sort (ties keep input order: image order, then order within the
image -- the same order pycocotools produces).  Classes without any ground-truth
box are left out of the mean; if no class has ground truth the mean is 0.0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

__all__ = [
    "ImageDetections",
    "ImageGroundTruth",
    "MapResult",
    "box_iou_xyxy",
    "voc_ap_all_point",
    "coco_ap_101_point",
    "evaluate_voc_map",
    "evaluate_coco_map",
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_THRESHOLDS",
]

# Exactly the grids pycocotools uses (np.linspace, not np.arange: arange drifts).
COCO_IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10, endpoint=True)
COCO_RECALL_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101, endpoint=True)


def _as_boxes(x: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, 4)
    if a.ndim != 2 or a.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4), got {a.shape}")
    return a


def _as_vector(x: np.ndarray, name: str, dtype: type, n: int) -> np.ndarray:
    a = np.asarray(x)
    if a.size == 0:
        a = a.reshape(0)
    if a.ndim != 1 or a.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {a.shape}")
    if np.issubdtype(dtype, np.integer) and a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.mod(a, 1) == 0):
            raise ValueError(f"{name} must hold integer class ids")
    return a.astype(dtype, copy=False)


@dataclass(frozen=True)
class ImageDetections:
    """Detections of one image. Arrays are converted/validated on construction."""

    boxes: np.ndarray  # (N, 4) float, x1y1x2y2
    scores: np.ndarray  # (N,) float
    labels: np.ndarray  # (N,) int class ids

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes, "ImageDetections.boxes")
        n = boxes.shape[0]
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", _as_vector(self.scores, "ImageDetections.scores", np.float64, n))
        object.__setattr__(self, "labels", _as_vector(self.labels, "ImageDetections.labels", np.int64, n))


@dataclass(frozen=True)
class ImageGroundTruth:
    """Ground-truth boxes of one image. Arrays are converted/validated on construction."""

    boxes: np.ndarray  # (M, 4) float, x1y1x2y2
    labels: np.ndarray  # (M,) int class ids

    def __post_init__(self) -> None:
        boxes = _as_boxes(self.boxes, "ImageGroundTruth.boxes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(
            self, "labels", _as_vector(self.labels, "ImageGroundTruth.labels", np.int64, boxes.shape[0])
        )


@dataclass(frozen=True)
class MapResult:
    map: float  # mean AP over classes that have at least one GT box (0.0 if none)
    per_class: dict[int, float]  # AP per class id, only classes with GT
    num_gt: dict[int, int]  # GT box count for every class id 0..num_classes-1 (0 included)
    iou_threshold: float
    #: every detection of a class with GT, all classes pooled, by descending score: (score, is TP)
    ranked_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ranked_tp: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def operating_point(self, conf: float) -> tuple[float, float, float]:
        """(precision, recall, F1) of the detections scoring >= ``conf`` (all classes pooled)."""
        total_gt = sum(self.num_gt.values())
        n = int(np.searchsorted(-self.ranked_scores, -conf, side="right"))
        tp = int(self.ranked_tp[:n].sum())
        precision = tp / n if n else 0.0
        recall = tp / total_gt if total_gt else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return precision, recall, f1

    def best_f1(self) -> tuple[float, float]:
        """(best F1 over all score thresholds, the threshold that gives it); (0, 1) without detections."""
        total_gt = sum(self.num_gt.values())
        if not self.ranked_scores.size or not total_gt:
            return 0.0, 1.0
        tp = np.cumsum(self.ranked_tp)
        n = np.arange(1, tp.size + 1)
        f1 = 2 * tp / (n + total_gt)  # = 2PR / (P + R)
        i = int(np.argmax(f1))
        return float(f1[i]), float(self.ranked_scores[i])


# --------------------------------------------------------------------------- IoU


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


# ------------------------------------------------------------- AP interpolations


def voc_ap_all_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """PASCAL VOC 2010+ all-point interpolated AP.

    ``recall`` (non-decreasing) and ``precision`` are the cumulative curve over the
    ranked detections.  Sentinels (recall 0 / precision 0 at the start, recall 1 /
    precision 0 at the end) are added, precision is made monotonically
    non-increasing from the right, and the area is ``sum(Δrecall × precision)``.
    An empty curve gives 0.0.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.shape} vs {prec.shape}")
    if rec.size == 0:
        return 0.0
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


def coco_ap_101_point(recall: np.ndarray, precision: np.ndarray) -> float:
    """COCO 101-point interpolated AP (as pycocotools' ``accumulate``).

    For each recall threshold r in 0, 0.01, ..., 1 take the maximum precision at
    any rank whose recall is ``>= r`` (0 if recall never reaches r); average.
    """
    rec = np.asarray(recall, dtype=np.float64).reshape(-1)
    prec = np.asarray(precision, dtype=np.float64).reshape(-1)
    if rec.shape != prec.shape:
        raise ValueError(f"recall and precision differ in length: {rec.shape} vs {prec.shape}")
    if rec.size == 0:
        return 0.0
    prec = np.maximum.accumulate(prec[::-1])[::-1]
    inds = np.searchsorted(rec, COCO_RECALL_THRESHOLDS, side="left")
    q = np.zeros(COCO_RECALL_THRESHOLDS.shape[0], dtype=np.float64)
    ok = inds < rec.size
    q[ok] = prec[inds[ok]]
    return float(q.mean())


# ----------------------------------------------------------------- shared helpers


def _check_inputs(
    dets: Sequence[ImageDetections], gts: Sequence[ImageGroundTruth], num_classes: int
) -> None:
    if len(dets) != len(gts):
        raise ValueError(f"got {len(dets)} detection entries but {len(gts)} ground-truth entries")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for i, (d, g) in enumerate(zip(dets, gts)):
        for what, lab in (("detection", d.labels), ("ground-truth", g.labels)):
            if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
                raise ValueError(
                    f"image {i}: {what} label out of range [0, {num_classes}): {lab.min()}..{lab.max()}"
                )


def _num_gt(gts: Sequence[ImageGroundTruth], num_classes: int) -> np.ndarray:
    counts = np.zeros(num_classes, dtype=np.int64)
    for g in gts:
        if g.labels.size:
            counts += np.bincount(g.labels, minlength=num_classes)
    return counts


def _pr_curve(is_tp: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative recall/precision along the last axis of a ranked TP mask."""
    tp = np.cumsum(is_tp, axis=-1, dtype=np.float64)
    fp = np.cumsum(~is_tp, axis=-1, dtype=np.float64)
    return tp / n_gt, tp / (tp + fp)


# ------------------------------------------------------------------------- VOC


def evaluate_voc_map(
    dets: Sequence[ImageDetections],
    gts: Sequence[ImageGroundTruth],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> MapResult:
    """PASCAL VOC mAP at ``iou_threshold`` (all-point interpolation). See module doc."""
    _check_inputs(dets, gts, num_classes)
    counts = _num_gt(gts, num_classes)

    # Per detection: its best same-class GT (global id) and that IoU. With VOC
    # matching this does not depend on the matching state, so it is precomputed.
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
        hit = best_iou[order] >= iou_threshold
        # The first-ranked hitting detection of each GT is the TP; later ones are duplicates.
        hit_pos = np.nonzero(hit)[0]
        _, first = np.unique(best_gid[order][hit_pos], return_index=True)
        is_tp = np.zeros(order.size, dtype=bool)
        is_tp[hit_pos[first]] = True
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


# ------------------------------------------------------------------------ COCO


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
