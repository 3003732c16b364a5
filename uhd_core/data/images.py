"""Decode any image file into RGB uint8 and resize it once to the training size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}


class ImageDecodeError(Exception):
    pass


def decode_image(path: Path) -> np.ndarray:
    """Return (H, W, 3) uint8 RGB.

    IMREAD_COLOR turns grayscale, CMYK and 16-bit files into 8-bit 3-channel images and applies
    the EXIF orientation, so every source format ends up the way a viewer shows it.
    """
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with non-ASCII paths
    except OSError as exc:
        raise ImageDecodeError(f"unreadable ({exc.strerror})") from None
    if data.size == 0:
        raise ImageDecodeError("empty file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError("not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_image(image: np.ndarray, size_hw: tuple[int, int], interpolation: str = "area") -> np.ndarray:
    """Stretch-resize (no letterbox) to (H, W); YOLO-normalized boxes stay valid unchanged."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (w, h), interpolation=INTERPOLATIONS[interpolation])
