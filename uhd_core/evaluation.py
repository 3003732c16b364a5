"""Score a detector: in the training loop (``evaluate_detector``, mAP@0.5 on a loader) and as
``uhd eval`` (``evaluate_model``: a checkpoint or an ONNX export on a YOLO folder; VOC mAP@IoU,
COCO mAP, P/R/F1).

It sits beside ``uhd_core.inference`` (whose predictors ``evaluate_model`` runs), below the engine,
which calls ``evaluate_detector`` every ``--eval-interval`` epochs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from uhd_core.data.dataset import Batch, decode_all, default_cache_dir, images_to_input, scan_yolo_folder
from uhd_core.errors import DataError
from uhd_core.inference import load_predictor
from uhd_core.metrics.ap import (
    ImageDetections,
    ImageGroundTruth,
    MapResult,
    evaluate_coco_map,
    evaluate_voc_map,
)
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

#: Detections per image scored (COCO's maxDets).
EVAL_TOPK = 100


@dataclass
class EvalReport:
    model: str
    image_dir: str
    num_images: int
    iou: float
    map_voc: float  # mAP at ``iou``, VOC all-point
    per_class: dict[int, float]
    coco_map_50_95: float
    coco_map_50: float
    conf_thresh: float
    precision: float
    recall: float
    f1: float
    best_f1: float
    best_f1_threshold: float
    imgs_per_s: float  # model forward + decode only
    num_gt: dict[int, int] = field(default_factory=dict)


def evaluate_model(model_path: str | Path, image_dir: str | Path, *, classes: tuple[int, ...] | None = None,
                   conf_thresh: float = EVAL_SCORE_FLOOR, iou: float = 0.5, batch_size: int = 64,
                   progress: Callable[[int, int], None] | None = None, follow_symlinks: bool = True) -> EvalReport:
    """``follow_symlinks``: read images/labels that are symlinks out of ``image_dir`` (default: yes; eval
    quotes no file's content, and a val split is often a folder of symlinks, as in bench/zoo.py);
    FIFOs, devices and images above the default pixel budget are never read."""
    predictor = load_predictor(model_path)
    cfg = predictor.cfg
    classes = tuple(classes) if classes else tuple(cfg.classes)
    index = scan_yolo_folder(Path(image_dir), classes, follow_symlinks)
    if len(index) == 0:
        raise DataError(f"--image-dir {image_dir}: no image has a box of --classes {','.join(map(str, classes))}")
    decoded = decode_all(index.root, index.files, predictor.img_size, predictor.resize_interpolation,
                         default_cache_dir(), follow_symlinks=follow_symlinks)
    rows = np.flatnonzero(decoded.ok)
    if len(rows) == 0:  # scoring nothing would report mAP 0 as if the model had failed
        raise DataError(f"--image-dir {index.root}: none of its {len(index)} labelled images could be decoded "
                        f"({decoded.errors[0]})")
    dets, gts = [], []
    seconds = 0.0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        t0 = time.perf_counter()
        out = predictor.predict(decoded.images[chunk], EVAL_TOPK)
        seconds += time.perf_counter() - t0
        for j, i in enumerate(chunk):
            dets.append(detections_from_decoded(out[j], EVAL_SCORE_FLOOR))
            gts.append(ImageGroundTruth(cxcywh_to_xyxy(index.boxes[i]), index.labels[i]))
        if progress is not None:
            progress(min(start + batch_size, len(rows)), len(rows))
    num_classes = len(classes)
    voc = evaluate_voc_map(dets, gts, num_classes, iou)
    coco = evaluate_coco_map(dets, gts, num_classes, EVAL_TOPK)
    precision, recall, f1 = voc.operating_point(conf_thresh)
    best_f1, best_thr = voc.best_f1()
    return EvalReport(str(model_path), str(index.root), len(rows), iou, voc.map, voc.per_class,
                      coco["map_50_95"], coco["map_50"], conf_thresh, precision, recall, f1, best_f1, best_thr,
                      len(rows) / max(seconds, 1e-9), voc.num_gt)
