"""Run a detector over a dataset and score it (mAP@0.5, VOC all-point)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from uhd_core.data.dataset import Batch, images_to_input
from uhd_core.metrics.ap import ImageDetections, ImageGroundTruth, MapResult, evaluate_voc_map
from uhd_core.models.detector import Detector

#: Scores below this are dropped before AP. AP integrates over every threshold, so evaluating
#: only detections above --conf-thresh would truncate the precision/recall curve and understate
#: mAP; --conf-thresh applies to renders and predictions instead.
EVAL_SCORE_FLOOR = 0.001


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(N, 4) cxcywh -> (N, 4) x1y1x2y2, same units."""
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, :2] - half, boxes[:, :2] + half], axis=1)


def detections_from_decoded(decoded: np.ndarray, score_floor: float) -> ImageDetections:
    """decoded (K, 6) score, class, cx, cy, w, h -> ImageDetections (xyxy normalized)."""
    keep = decoded[:, 0] >= score_floor
    rows = decoded[keep]
    return ImageDetections(cxcywh_to_xyxy(rows[:, 2:6]), rows[:, 0], rows[:, 1].astype(np.int64))


@dataclass
class EvalOutput:
    result: MapResult
    detections: list[ImageDetections]
    ground_truths: list[ImageGroundTruth]


@torch.no_grad()
def evaluate_detector(model: Detector, loader: DataLoader, device: torch.device, num_classes: int, topk: int,
                      amp_dtype: torch.dtype | None = None) -> EvalOutput:
    was_training = model.training
    model.eval()
    dets: list[ImageDetections] = []
    gts: list[ImageGroundTruth] = []
    batch: Batch
    for batch in loader:
        x = images_to_input(batch.images, device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            outputs = model(x)
        decoded = model.head.decode(outputs, topk).float().cpu().numpy()
        for i in range(decoded.shape[0]):
            dets.append(detections_from_decoded(decoded[i], EVAL_SCORE_FLOOR))
            valid = batch.labels[i] >= 0
            gts.append(ImageGroundTruth(cxcywh_to_xyxy(batch.boxes[i][valid].numpy()), batch.labels[i][valid].numpy()))
    model.train(was_training)
    return EvalOutput(evaluate_voc_map(dets, gts, num_classes, 0.5), dets, gts)
