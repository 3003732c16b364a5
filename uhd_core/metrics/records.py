"""Inputs and results of the AP evaluators: validated per-image detections / ground truth, MapResult."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


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

