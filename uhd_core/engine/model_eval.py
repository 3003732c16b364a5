"""`uhd eval`: score a checkpoint or an ONNX export on a YOLO folder (VOC mAP@IoU, COCO mAP, P/R/F1)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uhd_core.data.dataset import decode_all, default_cache_dir, scan_yolo_folder
from uhd_core.engine.evaluate import EVAL_SCORE_FLOOR, cxcywh_to_xyxy, detections_from_decoded
from uhd_core.errors import DataError
from uhd_core.inference import load_predictor
from uhd_core.metrics.ap import ImageGroundTruth, evaluate_coco_map, evaluate_voc_map

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
