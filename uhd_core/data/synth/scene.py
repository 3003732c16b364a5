"""One synthetic image: a background, non-person distractors, 0..3 figures placed on it, photometric jitter."""

from __future__ import annotations

import math

import cv2
import numpy as np

from uhd_core.data.synth.paint import _ONE, _SHIFT, _bg_colour, _fpt, _fx, _hsv_colour
from uhd_core.data.synth.person import _mask_box, _render_on

Box = tuple[float, float, float, float]

_IMG_SIDE = (96, 256)  # inclusive range of image width and height in px
# Nominal figure height as a fraction of image height, log-uniform. The range puts the median
# box height near 0.48, as in the real COCO person dev set: at 64x64 input, smaller thin stick
# figures are a few pixels wide and would make the demo a test of sub-pixel localisation.
_HEIGHT_FRAC = (0.25, 0.95)
_MIN_VISIBLE_FRAC = 0.5  # an earlier figure must keep this share of its pixels after overlaps
_MIN_IN_IMAGE_FRAC = 0.4  # a border-cut figure must keep this share of its pixels in the image


def _noise_field(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 smooth noise in 0..1; the cell size sets the texture scale."""
    cell = rng.uniform(2.0, 40.0)
    gh, gw = max(2, int(round(h / cell))), max(2, int(round(w / cell)))
    base = rng.random((gh, gw), dtype=np.float32)
    field = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:
        field = cv2.GaussianBlur(field, (0, 0), rng.uniform(0.5, 2.0))
    lo, hi = float(field.min()), float(field.max())
    return (field - lo) / max(hi - lo, 1e-6)


def _gradient(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w) float32 linear ramp in 0..1 along a random direction."""
    theta = rng.uniform(0.0, 2.0 * math.pi)
    xs = np.arange(w, dtype=np.float32) * math.cos(theta)
    ys = np.arange(h, dtype=np.float32) * math.sin(theta)
    t = ys[:, None] + xs[None, :]
    lo, hi = float(t.min()), float(t.max())
    return (t - lo) / max(hi - lo, 1e-6)


def _two_colour(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    return c0 + t[..., None] * (c1 - c0)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 RGB background, values roughly 0..255."""
    c0 = _hsv_colour(rng, (0.0, 1.0), (0.1, 1.0))
    c1 = _hsv_colour(rng, (0.0, 1.0), (0.1, 1.0))
    kind = rng.choice(4, p=[0.2, 0.3, 0.3, 0.2])
    if kind == 0:
        img = np.empty((h, w, 3), dtype=np.float32)
        img[...] = c0
    elif kind == 1:
        img = _two_colour(_gradient(rng, h, w), c0, c1)
    elif kind == 2:
        img = _two_colour(_noise_field(rng, h, w), c0, c1)
    else:  # a horizon: sky-ish gradient above, textured ground below
        horizon = int(rng.uniform(0.25, 0.75) * h)
        img = _two_colour(_gradient(rng, h, w), c0, c1)
        ground = _two_colour(_noise_field(rng, h, w), _hsv_colour(rng, (0.0, 0.8), (0.1, 0.8)),
                             _hsv_colour(rng, (0.0, 0.8), (0.1, 0.8)))
        img[horizon:] = ground[horizon:]
    if rng.random() < 0.5:  # mono texture on top so flat regions are rarely perfectly flat
        img = img + (_noise_field(rng, h, w)[..., None] - 0.5) * rng.uniform(10.0, 60.0)
    return img


def _distractors(rng: np.random.Generator, img: np.ndarray) -> None:
    """Draw 0..4 non-person shapes in place on a uint8 RGB image."""
    h, w = img.shape[:2]
    s = min(h, w)
    for _ in range(int(rng.integers(0, 5))):
        colour = _bg_colour(_hsv_colour(rng, (0.0, 1.0), (0.05, 1.0)))
        fill = rng.random() < 0.6
        thick = -1 if fill else int(rng.integers(1, 5))
        line_type = cv2.LINE_AA if rng.random() < 0.5 else cv2.LINE_8
        kind = rng.choice(6, p=[0.22, 0.18, 0.18, 0.22, 0.1, 0.1])
        cx, cy = rng.uniform(-0.1 * w, 1.1 * w), rng.uniform(-0.1 * h, 1.1 * h)
        if kind == 0:  # rectangle, sometimes rotated
            rw, rh = rng.uniform(0.05, 0.6) * w, rng.uniform(0.05, 0.6) * h
            pts = cv2.boxPoints(((cx, cy), (rw, rh), rng.uniform(0, 90) if rng.random() < 0.4 else 0.0))
            pts = np.rint(pts * _ONE).astype(np.int32)
            if fill:
                cv2.fillConvexPoly(img, pts, colour, line_type, _SHIFT)
            else:
                cv2.polylines(img, [pts], True, colour, thick, line_type, _SHIFT)
        elif kind == 1:  # circle or ellipse
            axes = (_fx(rng.uniform(0.03, 0.3) * s), _fx(rng.uniform(0.03, 0.3) * s))
            cv2.ellipse(img, _fpt((cx, cy)), axes, rng.uniform(0, 180), 0, 360, colour, thick,
                        line_type, _SHIFT)
        elif kind == 2:  # a single thick line
            ang, length = rng.uniform(0, math.pi), rng.uniform(0.2, 1.2) * s
            d = (math.cos(ang) * length / 2, math.sin(ang) * length / 2)
            cv2.line(img, _fpt((cx - d[0], cy - d[1])), _fpt((cx + d[0], cy + d[1])), colour,
                     int(rng.integers(1, 7)), line_type, _SHIFT)
        elif kind == 3:  # an irregular blob: a radial polygon with smoothed radii
            k = int(rng.integers(6, 15))
            radius = rng.uniform(0.05, 0.3) * s
            radii = radius * rng.uniform(0.5, 1.5, size=k)
            radii = (radii + np.roll(radii, 1) + np.roll(radii, -1)) / 3.0
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=k))
            pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
            cv2.fillPoly(img, [np.rint(pts * _ONE).astype(np.int32)], colour, line_type, _SHIFT)
        elif kind == 4:  # parallel bars (fences, railings): vertical structure that is not legs
            n_bars = int(rng.integers(3, 9))
            gap, bar_len = rng.uniform(0.03, 0.1) * w, rng.uniform(0.2, 0.8) * h
            t = int(rng.integers(1, 5))
            for j in range(n_bars):
                x = cx + j * gap
                cv2.line(img, _fpt((x, cy)), _fpt((x, cy + bar_len)), colour, t, line_type, _SHIFT)
        else:  # random scribble polyline
            k = int(rng.integers(3, 8))
            pts = np.stack([rng.uniform(0, w, size=k), rng.uniform(0, h, size=k)], axis=1)
            cv2.polylines(img, [np.rint(pts * _ONE).astype(np.int32)], False, colour,
                          int(rng.integers(1, 4)), line_type, _SHIFT)


def _place_people(rng: np.random.Generator, img: np.ndarray) -> list[Box]:
    """Draw 0..3 figures in place on ``img``; return their (x1, y1, x2, y2) px boxes, x2/y2
    exclusive, each the tight box of that figure's own in-image pixels."""
    h, w = img.shape[:2]
    count = 0 if rng.random() < 0.05 else int(rng.integers(1, 4))
    owner = np.full((h, w), -1, dtype=np.int16)  # which figure is on top at each pixel
    boxes: list[Box] = []
    totals: list[int] = []
    visible = np.zeros(0, dtype=np.int64)
    for _ in range(count):
        for _attempt in range(8):
            height, cx, cy_feet = _sample_spot(rng, boxes, h, w)
            layer, mask, full_px = _render_on((h, w), rng, cx, cy_feet, height)
            m = mask > 0
            n_px = int(np.count_nonzero(m))
            box = _mask_box(mask)
            # A sliver (a hand or a head poking in at the border) is not a fair "person" label.
            if box is None or n_px < max(30, _MIN_IN_IMAGE_FRAC * full_px):
                continue
            if box[2] - box[0] < 3 or box[3] - box[1] < 6:
                continue
            if boxes:
                lost = np.bincount(owner[m].astype(np.int64) + 1, minlength=len(boxes) + 1)[1:]
                if np.any(visible - lost < _MIN_VISIBLE_FRAC * np.asarray(totals)):
                    continue  # would bury an earlier figure whose label already says "person"
                visible = visible - lost
            img[m] = layer[m]
            owner[m] = len(boxes)
            boxes.append(box)
            totals.append(n_px)
            visible = np.append(visible, n_px)
            break
    return boxes


def _sample_spot(rng: np.random.Generator, boxes: list[Box], h: int, w: int) -> tuple[float, float, float]:
    """(nominal height, hip x, feet y) in px for the next figure on an (h, w) image: free-standing,
    grouped with one of the earlier ``boxes`` (so that boxes overlap), or cut by the image border."""
    lo, hi = math.log(_HEIGHT_FRAC[0]), math.log(_HEIGHT_FRAC[1])
    height = math.exp(rng.uniform(lo, hi)) * h
    group, cut = rng.random() < 0.2, rng.random() < 0.2
    if boxes and group:  # group with an earlier figure so that boxes overlap
        bx1, by1, bx2, by2 = boxes[int(rng.integers(len(boxes)))]
        height = float(np.clip((by2 - by1) * rng.uniform(0.75, 1.3), _HEIGHT_FRAC[0] * h, _HEIGHT_FRAC[1] * h))
        cx = 0.5 * (bx1 + bx2) + rng.uniform(-0.8, 0.8) * (bx2 - bx1)
        cy_feet = by2 + rng.uniform(-0.15, 0.15) * (by2 - by1)
    elif cut:  # cut by the image border
        side = rng.integers(4)
        cx = rng.uniform(0.1 * height, w - 0.1 * height) if w > 0.2 * height else w / 2
        cy_feet = rng.uniform(min(height, h), h) if height < h else float(h)
        if side == 0:
            cx = rng.uniform(-0.12, 0.05) * height
        elif side == 1:
            cx = w + rng.uniform(-0.05, 0.12) * height
        elif side == 2:
            cy_feet = h + rng.uniform(0.1, 0.45) * height
        else:
            cy_feet = rng.uniform(0.55, 0.85) * height
    else:
        margin = 0.2 * height
        cx = rng.uniform(margin, w - margin) if w > 2 * margin else w / 2
        cy_feet = rng.uniform(min(1.02 * height, h), h)
    return height, cx, cy_feet


def _render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[Box]]:
    """One (H, W, 3) uint8 RGB image and its (x1, y1, x2, y2) px person boxes."""
    h, w = (int(v) for v in rng.integers(_IMG_SIDE[0], _IMG_SIDE[1] + 1, size=2))
    img = np.ascontiguousarray(np.clip(_background(rng, h, w), 0, 255), dtype=np.uint8)
    _distractors(rng, img)
    boxes = _place_people(rng, img)
    # Photometric jitter after the figures so they share the scene's exposure and sensor noise;
    # it changes values, never which pixels a figure covers, so the boxes stay tight.
    gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20.0, 20.0)
    out = img.astype(np.float32) * gain + bias
    if rng.random() < 0.7:
        out += rng.normal(0.0, rng.uniform(1.0, 6.0), size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), boxes
