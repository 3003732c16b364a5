"""Sample renders: validation images with predicted (and ground-truth) boxes, for a quick look."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from uhd_core.metrics.ap import ImageDetections, ImageGroundTruth
from uhd_core.outputs import atomic_write_bytes, encode_image

RENDER_SCALE = 4  # 64x64 inputs are too small to judge by eye


def render_detections(image: np.ndarray, dets: ImageDetections, gt: ImageGroundTruth, conf_thresh: float) -> np.ndarray:
    """image (H, W, 3) uint8 RGB, boxes xyxy normalized -> upscaled BGR image (green GT, red predictions)."""
    h, w = image.shape[:2]
    big = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (w * RENDER_SCALE, h * RENDER_SCALE),
                     interpolation=cv2.INTER_NEAREST)
    scale = np.array([w, h, w, h]) * RENDER_SCALE
    for box in gt.boxes:
        x1, y1, x2, y2 = (box * scale).round().astype(int)
        cv2.rectangle(big, (x1, y1), (x2, y2), (0, 200, 0), 1)
    for box, score in zip(dets.boxes, dets.scores):
        if score < conf_thresh:
            continue
        x1, y1, x2, y2 = (box * scale).round().astype(int)
        cv2.rectangle(big, (x1, y1), (x2, y2), (0, 0, 255), 1)
        cv2.putText(big, f"{score:.2f}", (x1, max(8, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 255), 1)
    return big


def write_renders(out_dir: Path, images: np.ndarray, dets: list[ImageDetections], gts: list[ImageGroundTruth],
                  conf_thresh: float, limit: int = 10) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(min(limit, len(images))):
        # Encoded in memory: cv2.imwrite crashes (SIGSEGV) on a run dir whose name is not UTF-8.
        png = encode_image(render_detections(images[i], dets[i], gts[i], conf_thresh), ".png")
        atomic_write_bytes(out_dir / f"val_{i:02d}.png", lambda fh, data=png: fh.write(data))
    return out_dir
