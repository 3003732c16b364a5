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

This module is the public entry point; the code lives in ``records`` (inputs and results),
``matching`` (IoU, the two matching rules, PR curves), ``voc`` and ``coco``.
"""

from uhd_core.metrics.coco import (
    COCO_IOU_THRESHOLDS,
    COCO_RECALL_THRESHOLDS,
    coco_ap_101_point,
    evaluate_coco_map,
)
from uhd_core.metrics.matching import box_iou_xyxy
from uhd_core.metrics.records import ImageDetections, ImageGroundTruth, MapResult
from uhd_core.metrics.voc import evaluate_voc_map, voc_ap_all_point

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
