"""Detection metrics."""

from uhd_core.metrics.ap import (
    COCO_IOU_THRESHOLDS,
    COCO_RECALL_THRESHOLDS,
    ImageDetections,
    ImageGroundTruth,
    MapResult,
    box_iou_xyxy,
    coco_ap_101_point,
    evaluate_coco_map,
    evaluate_voc_map,
    voc_ap_all_point,
)

__all__ = [
    "COCO_IOU_THRESHOLDS",
    "COCO_RECALL_THRESHOLDS",
    "ImageDetections",
    "ImageGroundTruth",
    "MapResult",
    "box_iou_xyxy",
    "coco_ap_101_point",
    "evaluate_coco_map",
    "evaluate_voc_map",
    "voc_ap_all_point",
]
