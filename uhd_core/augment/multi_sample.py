"""Ops that combine several samples: Mosaic, MixUp, CopyPaste.

Each draws partner samples from ``source(rng)`` (see registry: another random un-augmented sample of
the dataset at the same size, boxes xyxy normalized), so the class sets ``needs_source = True`` and
the pipeline raises ``ValueError`` when it is called without ``source=``. Names, YAML keys, defaults
and semantics are the original tool's (``uhd/augment.py``, where the dataset passed itself in):

* **Mosaic** (no keys): this sample and three partners tile a 2H x 2W canvas (this one top-left,
  then top-right, bottom-left, bottom-right, each at full size, no rescaling), and an H x W window
  whose centre is uniform in ``[W/2, 3W/2] x [H/2, 3H/2]`` is cut out, i.e. a whole-pixel offset
  ``x0 = int(U(0, W))``, ``y0 = int(U(0, H))``. The four quadrants meet at ``(W - x0, H - y0)`` in the
  output. Boxes move with their sample, are clipped to the window, and boxes left with normalized
  area < 1e-6 are dropped with their labels (the original's filter).
* **MixUp** (no keys): ``0.5 * image + 0.5 * partner`` (the original's fixed lambda 0.5; there is no
  alpha/beta key), all boxes of both kept (this sample's first).
* **CopyPaste** (``sample_num`` 1, ``max_paste_objects`` 5, ``scale_jitter`` [0.8, 1.2]): for each of
  ``sample_num`` partners (partners without boxes are skipped), ``min(max_paste_objects, N)`` of its
  boxes are chosen at random (without replacement); each box's pixels (``floor`` of its corners,
  clipped to the image; a rectangular patch, there are no masks) are scaled by ``s ~
  U(scale_jitter)`` (``max(1, int(size * s))`` pixels, ``cv2.resize`` INTER_LINEAR) and pasted at a
  uniform whole-pixel position that keeps the patch inside the image; its box and label are
  appended. As in the original, the position ignores existing boxes: a patch may cover (parts of)
  objects already there, whose boxes are kept, and later patches may cover earlier ones.

Default ``prob`` (when the YAML entry gives none): **Mosaic 1.0, MixUp 1.0, CopyPaste 0.3**, which
is what the original does for an entry written as a mapping without ``prob`` (``should_apply(1.0)``
and ``aug_cfg.get("prob", 0.3)``); unlike most ops, these do not default to 0. An empty entry
(``Mosaic:``) still disables the op, a bare number is its probability.

Where this differs from the original: boxes are clipped as xyxy (the original clipped the cxcywh
components, which leaves a box cut by the window or the image border wider than what is visible);
a CopyPaste patch larger than the image is cropped to it (the original failed on the assignment);
the patch is resized with INTER_LINEAR (the original used the dataset's resize mode, nearest by
default); a partner of another size is resized to this sample's (the contract says sources match;
the original resized too). Randomness comes only from the caller's ``np.random.Generator`` (the
original used the global ``random`` / ``np.random``), so outputs are a pure function of it.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from uhd_core.augment._params import as_int, as_pair
from uhd_core.augment.boxes import clip01
from uhd_core.augment.registry import AugOp, SampleSource, register_augment_op

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]

# The original drops boxes whose normalized area falls under this after Mosaic / CopyPaste.
_MIN_AREA = 1e-6
# Slack for float32 rounding when box corners on whole pixels are turned back into pixel indices.
_PIXEL_EPS = 1e-3


def _drop_tiny(boxes: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop boxes (already clipped) whose normalized area is below the original's 1e-6."""
    if not len(boxes):
        return boxes, labels
    wh = boxes[:, 2:] - boxes[:, :2]
    keep = wh[:, 0] * wh[:, 1] >= _MIN_AREA
    if keep.all():
        return boxes, labels
    return boxes[keep], labels[keep]


def _draw(source: SampleSource, rng: np.random.Generator, h: int, w: int) -> Sample:
    """One partner sample with its image at ``h x w`` and boxes as ``(N, 4)`` float32."""
    image, boxes, labels = source(rng)
    if image.shape[:2] != (h, w):
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    return image, boxes, labels


# --- Mosaic --------------------------------------------------------------------------------------


class _Mosaic:
    needs_source = True

    def _offsets(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
        """Top-left ``(x0, y0)`` of the H x W window on the 2H x 2W canvas, in ``[0, W] x [0, H]``.

        The original: ``cx ~ U(W/2, 3W/2)``, ``x0 = int(cx - W/2)`` (likewise y)."""
        u = rng.random(2)
        return min(int(float(u[0]) * w), w), min(int(float(u[1]) * h), h)

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
        source: SampleSource,
    ) -> Sample:
        h, w = image.shape[:2]
        samples = [(image, boxes, labels)] + [_draw(source, rng, h, w) for _ in range(3)]
        x0, y0 = self._offsets(h, w, rng)
        sx, sy = w - x0, h - y0  # where the four tiles meet in the output
        (im0, _, _), (im1, _, _), (im2, _, _), (im3, _, _) = samples
        out = np.empty_like(image)
        out[:sy, :sx] = im0[y0:, x0:]
        out[:sy, sx:] = im1[y0:, :x0]
        out[sy:, :sx] = im2[:y0, x0:]
        out[sy:, sx:] = im3[:y0, :x0]

        a, b = x0 / w, y0 / h
        shifts = ((-a, -b), (1.0 - a, -b), (-a, 1.0 - b), (1.0 - a, 1.0 - b))
        moved = [
            bx + np.array([dx, dy, dx, dy], dtype=np.float32)
            for (_, bx, _), (dx, dy) in zip(samples, shifts)
            if len(bx)
        ]
        if not moved:
            return out, np.zeros((0, 4), dtype=np.float32), labels[:0]
        out_boxes = clip01(np.concatenate(moved).astype(np.float32, copy=False))
        out_labels = np.concatenate([lb for _, bx, lb in samples if len(bx)]).astype(np.int64, copy=False)
        out_boxes, out_labels = _drop_tiny(out_boxes, out_labels)
        return out, out_boxes, out_labels


@register_augment_op("Mosaic", default_prob=1.0)
def build_mosaic() -> AugOp:
    """Tile this sample and three partners on a 2H x 2W canvas and cut an H x W window at a
    uniform whole-pixel offset (the tiles meet at a random point); boxes follow, clipped, and
    vanishing ones dropped. ``prob`` defaults to 1.0 (the original's default)."""
    return _Mosaic()


# --- MixUp ---------------------------------------------------------------------------------------

_MIXUP_LAMBDA = 0.5  # the original's fixed blend weight


class _MixUp:
    needs_source = True

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
        source: SampleSource,
    ) -> Sample:
        h, w = image.shape[:2]
        other, other_boxes, other_labels = _draw(source, rng, h, w)
        # Rounded and saturated in one pass (cv2.addWeighted into a new uint8 array).
        out = cv2.addWeighted(image, _MIXUP_LAMBDA, other, 1.0 - _MIXUP_LAMBDA, 0.0)
        out_boxes = clip01(np.concatenate((boxes, other_boxes)).astype(np.float32, copy=False))
        out_labels = np.concatenate((labels, other_labels)).astype(np.int64, copy=False)
        return out, out_boxes, out_labels


@register_augment_op("MixUp", default_prob=1.0)
def build_mixup() -> AugOp:
    """Blend 50:50 with a partner sample and keep the boxes of both. ``prob`` defaults to 1.0 (the
    original's default)."""
    return _MixUp()


# --- CopyPaste -----------------------------------------------------------------------------------


class _CopyPaste:
    needs_source = True

    def __init__(self, sample_num: int, max_paste_objects: int, scale_jitter: tuple[float, float]) -> None:
        self._sample_num = sample_num
        self._max_objects = max_paste_objects
        self._lo, self._hi = scale_jitter

    def __call__(
        self, image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
        source: SampleSource,
    ) -> Sample:
        h, w = image.shape[:2]
        out: np.ndarray | None = None
        new_boxes: list[tuple[int, int, int, int]] = []
        new_labels: list[int] = []
        for _ in range(self._sample_num):
            other, other_boxes, other_labels = _draw(source, rng, h, w)
            n = len(other_boxes)
            if n == 0 or self._max_objects == 0:
                continue
            chosen = rng.permutation(n)[: min(self._max_objects, n)]
            # Box corners -> pixel indices (floor; the slack keeps corners on whole pixels exact).
            px = np.floor(other_boxes[chosen] * np.array([w, h, w, h], dtype=np.float32) + _PIXEL_EPS)
            px = np.clip(px, 0, [w, h, w, h]).astype(np.int64)
            for (x1, y1, x2, y2), label in zip(px.tolist(), other_labels[chosen].tolist()):
                if x2 <= x1 or y2 <= y1:
                    continue  # nothing of the box is on the image (the original's empty patch)
                patch = other[y1:y2, x1:x2]
                scale = float(rng.uniform(self._lo, self._hi))
                new_w, new_h = max(1, int((x2 - x1) * scale)), max(1, int((y2 - y1) * scale))
                ox, oy = (int(v) for v in rng.integers(0, (max(0, w - new_w) + 1, max(0, h - new_h) + 1)))
                if (new_w, new_h) != (x2 - x1, y2 - y1):
                    patch = cv2.resize(patch, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
                if out is None:
                    out = image.copy()
                vis_w, vis_h = min(new_w, w - ox), min(new_h, h - oy)  # a patch larger than the image
                out[oy : oy + vis_h, ox : ox + vis_w] = patch[:vis_h, :vis_w]
                new_boxes.append((ox, oy, ox + vis_w, oy + vis_h))
                new_labels.append(label)
        if not new_boxes:
            return image, clip01(boxes.copy()), labels
        added = np.array(new_boxes, dtype=np.float32) / np.array([w, h, w, h], dtype=np.float32)
        out_boxes = clip01(np.concatenate((boxes, added)).astype(np.float32, copy=False))
        out_labels = np.concatenate((labels, np.array(new_labels, dtype=np.int64)))
        out_boxes, out_labels = _drop_tiny(out_boxes, out_labels)
        return out, out_boxes, out_labels


@register_augment_op("CopyPaste", default_prob=0.3)
def build_copy_paste(*, sample_num: Any = 1, max_paste_objects: Any = 5, scale_jitter: Any = (0.8, 1.2)) -> AugOp:
    """Paste up to ``max_paste_objects`` box crops from each of ``sample_num`` partner samples,
    each scaled by ``U(scale_jitter)``, at random places (existing boxes are not avoided, as in the
    original); their boxes and labels are added. ``prob`` defaults to 0.3 (the original's default)."""
    return _CopyPaste(
        as_int(sample_num, "CopyPaste.sample_num", lo=0, hi=1000),
        as_int(max_paste_objects, "CopyPaste.max_paste_objects", lo=0, hi=100_000),
        as_pair(scale_jitter, "CopyPaste.scale_jitter", lo=1e-3, hi=10.0),
    )
