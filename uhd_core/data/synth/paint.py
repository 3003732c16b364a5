"""Drawing primitives of the synthetic set: sub-pixel fixed-point coordinates, colours, and a painter
that draws a figure and its exact pixel mask with the same geometry."""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

# Sub-pixel precision for cv2 drawing: small figures (~15 px tall) would otherwise snap joints
# to whole pixels and all look alike.
_SHIFT = 4
_ONE = 1 << _SHIFT
# Figures are drawn without anti-aliasing so that the set of pixels a figure touched is exactly
# known, which is what makes the labels tight.
_FIG_LINE = cv2.LINE_8

# Figure colours stay away from pure black/white so a figure never vanishes into a zero canvas
# (the unit tests rely on that) and JPEG clipping does not eat thin limbs.
_COLOUR_LO, _COLOUR_HI = 12, 248


def _hsv_colour(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]) -> np.ndarray:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v))
    return np.array((r * 255.0, g * 255.0, b * 255.0), dtype=np.float32)


def _jitter(rng: np.random.Generator, colour: np.ndarray, amount: float) -> np.ndarray:
    return colour + rng.uniform(-amount, amount, size=3).astype(np.float32)


def _fig_colour(c: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(np.rint(c), _COLOUR_LO, _COLOUR_HI).astype(int)
    return (int(c[0]), int(c[1]), int(c[2]))


def _bg_colour(c: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(np.rint(c), 0, 255).astype(int)
    return (int(c[0]), int(c[1]), int(c[2]))


def _fx(v: float) -> int:
    return int(round(v * _ONE))


def _fpt(p: tuple[float, float]) -> tuple[int, int]:
    return (_fx(p[0]), _fx(p[1]))


def _direction(angle_deg: float) -> tuple[float, float]:
    """Unit vector for a limb angle: 0 = straight down, +90 = towards +x, 180 = straight up
    (image coordinates, y grows downwards)."""
    a = math.radians(angle_deg)
    return (math.sin(a), math.cos(a))


def _step(p: tuple[float, float], length: float, angle_deg: float) -> tuple[float, float]:
    dx, dy = _direction(angle_deg)
    return (p[0] + length * dx, p[1] + length * dy)


class _Painter:
    """Draws every primitive twice, into an RGB layer and into a 0/255 mask, with identical
    geometry, so the mask is exactly the set of pixels the figure covers."""

    def __init__(self, h: int, w: int) -> None:
        self.layer = np.zeros((h, w, 3), dtype=np.uint8)
        self.mask = np.zeros((h, w), dtype=np.uint8)

    def line(self, p, q, colour, thickness: float) -> None:
        t = max(1, int(round(thickness)))
        cv2.line(self.layer, _fpt(p), _fpt(q), colour, t, _FIG_LINE, _SHIFT)
        cv2.line(self.mask, _fpt(p), _fpt(q), 255, t, _FIG_LINE, _SHIFT)

    def circle(self, c, radius: float, colour) -> None:
        r = max(_ONE // 2, _fx(radius))
        cv2.circle(self.layer, _fpt(c), r, colour, -1, _FIG_LINE, _SHIFT)
        cv2.circle(self.mask, _fpt(c), r, 255, -1, _FIG_LINE, _SHIFT)

    def ellipse(self, c, axes, angle: float, start: float, end: float, colour) -> None:
        ax = (max(_ONE // 2, _fx(axes[0])), max(_ONE // 2, _fx(axes[1])))
        cv2.ellipse(self.layer, _fpt(c), ax, angle, start, end, colour, -1, _FIG_LINE, _SHIFT)
        cv2.ellipse(self.mask, _fpt(c), ax, angle, start, end, 255, -1, _FIG_LINE, _SHIFT)

    def polygon(self, pts, colour) -> None:
        arr = np.array([_fpt(p) for p in pts], dtype=np.int32)
        cv2.fillConvexPoly(self.layer, arr, colour, _FIG_LINE, _SHIFT)
        cv2.fillConvexPoly(self.mask, arr, 255, _FIG_LINE, _SHIFT)

