"""Procedurally drawn SYNTHETIC demo dataset of human figures, in YOLO format.

Everything here is made up: figures are built from cv2 drawing primitives (a head, a torso,
two two-segment arms and two two-segment legs in a few poses) over gradient, noise and flat
backgrounds with non-person distractor shapes. It exists so the toolkit can be tried end to end
(train, eval, export) in minutes without downloading anything. Numbers measured on it say
nothing about real detection quality: real numbers come from real data.

Layout written by :func:`write_synthetic_dataset`, directly into ``out_dir``::

    synth_000000.jpg   RGB image (saved as JPEG, quality 90), width and height each 96..256 px
    synth_000000.txt   one line per person: ``0 cx cy w h``
                       class 0 = person; cxcywh normalized 0..1 by image width/height, 6 decimals;
                       the tight box of the figure's pixels that lie inside the image
                       (an empty file when the image holds no figure)

Every image is generated from its own RNG derived from ``(seed, index)``, so image ``i`` is the
same whatever ``n`` is, and the same seed gives byte-identical files (on the same OpenCV build:
the JPEG encoder is part of the output).
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["SynthReport", "draw_person", "write_synthetic_dataset"]

# Sub-pixel precision for cv2 drawing: small figures (~15 px tall) would otherwise snap joints
# to whole pixels and all look alike.
_SHIFT = 4
_ONE = 1 << _SHIFT
# Figures are drawn without anti-aliasing so that the set of pixels a figure touched is exactly
# known, which is what makes the labels tight.
_FIG_LINE = cv2.LINE_8
_JPEG_QUALITY = 90
_IMG_SIDE = (96, 256)  # inclusive range of image width and height in px
# Nominal figure height as a fraction of image height, log-uniform. The range puts the median
# box height near 0.48, as in the real COCO person dev set: at 64x64 input, smaller thin stick
# figures are a few pixels wide and would make the demo a test of sub-pixel localisation.
_HEIGHT_FRAC = (0.25, 0.95)
_MIN_VISIBLE_FRAC = 0.5  # an earlier figure must keep this share of its pixels after overlaps
_MIN_IN_IMAGE_FRAC = 0.4  # a border-cut figure must keep this share of its pixels in the image

# Figure colours stay away from pure black/white so a figure never vanishes into a zero canvas
# (the unit tests rely on that) and JPEG clipping does not eat thin limbs.
_COLOUR_LO, _COLOUR_HI = 12, 248

_SKIN_TONES = np.array(
    [
        (255, 224, 196),
        (241, 194, 125),
        (234, 192, 134),
        (224, 172, 105),
        (198, 134, 66),
        (161, 102, 52),
        (141, 85, 36),
        (92, 51, 23),
    ],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [(20, 16, 14), (45, 30, 20), (90, 60, 35), (150, 110, 60), (210, 180, 110), (160, 160, 160)],
    dtype=np.float32,
)


@dataclass(frozen=True)
class SynthReport:
    """What :func:`write_synthetic_dataset` wrote: ``num_images`` .jpg/.txt pairs holding
    ``num_boxes`` person boxes in total, in ``out_dir``."""

    out_dir: Path
    num_images: int
    num_boxes: int


# ---------------------------------------------------------------------------------------------
# colours and small helpers


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


# ---------------------------------------------------------------------------------------------
# figures


@dataclass
class _Pose:
    lean: float  # torso angle from vertical in degrees, + leans towards +x
    width: float  # 1 = seen from the front, ~0.5 = seen from the side
    arms: tuple[tuple[float, float], tuple[float, float]]  # (upper, fore) angles, far then near
    legs: tuple[tuple[float, float], tuple[float, float]]  # (thigh, shin) angles, far then near
    side_view: bool


def _sample_pose(rng: np.random.Generator) -> _Pose:
    u = rng.uniform
    kind = rng.choice(5, p=[0.2, 0.15, 0.25, 0.1, 0.3])
    if kind in (0, 1):  # standing, front-ish; kind 1 sometimes with hands on hips
        legs = ((-u(1, 9), -u(0, 6)), (u(1, 9), u(0, 6)))
        if kind == 1 and rng.random() < 0.5:
            arms = ((-u(35, 60), u(15, 50)), (u(35, 60), -u(15, 50)))
        else:
            a_far, a_near = -u(3, 22), u(3, 22)
            arms = ((a_far, a_far + u(-10, 10)), (a_near, a_near + u(-10, 10)))
        return _Pose(u(-4, 4), u(0.75, 1.15), arms, legs, side_view=False)
    if kind == 2:  # walking, side view
        a = u(10, 35)
        arms = ((a * u(0.6, 1.0), a + u(5, 40)), (-a, -a + u(5, 40)))
        thigh_front, thigh_back = u(12, 30), -u(8, 25)
        legs = ((thigh_front, thigh_front - u(0, 12)), (thigh_back, thigh_back - u(5, 40)))
        if rng.random() < 0.5:
            legs = (legs[1], legs[0])
        return _Pose(u(0, 8), u(0.45, 0.7), arms, legs, side_view=True)
    if kind == 3:  # running, side view: bigger swings, bent elbows, forward lean
        a = u(25, 55)
        arms = ((a, a + u(70, 110)), (-a, -a + u(70, 110)))
        thigh_front, thigh_back = u(30, 60), -u(10, 30)
        legs = ((thigh_front, thigh_front - u(0, 30)), (thigh_back, thigh_back - u(50, 100)))
        if rng.random() < 0.5:
            legs = (legs[1], legs[0])
        return _Pose(u(6, 18), u(0.45, 0.7), arms, legs, side_view=True)
    if kind == 4 and rng.random() < 0.45:  # sitting-ish: thighs roughly horizontal
        thigh = u(65, 100)
        legs = ((thigh + u(-8, 8), u(-15, 15)), (thigh, u(-15, 15)))
        a = u(5, 40)
        arms = ((a * u(0.7, 1.0), a + u(40, 80)), (a, a + u(40, 80)))
        return _Pose(-u(0, 12), u(0.5, 1.0), arms, legs, side_view=True)
    # arms raised (one or both), front-ish
    legs = ((-u(2, 14), -u(0, 8)), (u(2, 14), u(0, 8)))
    raise_far, raise_near = rng.random() < 0.7, rng.random() < 0.7
    if not (raise_far or raise_near):
        raise_near = True
    arms_l = []
    for raised, sign in ((raise_far, -1.0), (raise_near, 1.0)):
        a = sign * (u(110, 175) if raised else u(3, 22))
        fore = a + sign * u(-20, 35) if raised else a + u(-10, 10)
        arms_l.append((a, fore))
    return _Pose(u(-4, 4), u(0.8, 1.15), (arms_l[0], arms_l[1]), legs, side_view=False)


def _render_person(
    shape: tuple[int, int], rng: np.random.Generator, cx: float, cy_feet: float, height: float
) -> tuple[np.ndarray, np.ndarray]:
    """Draw one figure into a fresh (H, W, 3) uint8 RGB layer and its (H, W) 0/255 mask.

    ``height`` is the nominal standing height in px (a sitting figure is shorter, raised arms
    reach above it); the lowest foot ends near ``cy_feet`` and the hips are centred on ``cx``.
    The random draws do not depend on ``shape``, so the same RNG state draws the same figure on
    any canvas.
    """
    H = float(height)
    pose = _sample_pose(rng)
    facing = 1.0 if rng.random() < 0.5 else -1.0
    build = rng.uniform(0.85, 1.2)  # slim .. broad

    skin = _jitter(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 12.0)
    shirt = _hsv_colour(rng, (0.0, 1.0), (0.15, 0.95))
    trousers = _hsv_colour(rng, (0.0, 0.8), (0.1, 0.75))
    shoes = _hsv_colour(rng, (0.0, 0.5), (0.05, 0.5))
    hair = _jitter(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 10.0)
    short_sleeves = rng.random() < 0.45
    shorts = rng.random() < 0.25
    hair_style = rng.choice(3, p=[0.15, 0.55, 0.3])  # none, short, long

    head_r = 0.065 * H * rng.uniform(0.9, 1.1)
    torso_len = 0.30 * H * rng.uniform(0.92, 1.08)
    neck_len = 0.035 * H
    upper_arm, fore_arm = 0.16 * H, 0.15 * H
    thigh_len, shin_len = 0.245 * H, 0.245 * H
    arm_t = max(1.0, 0.048 * H * build)
    leg_t = max(1.0, 0.068 * H * build)
    sh_half = 0.105 * H * pose.width * build
    hip_half = 0.075 * H * max(pose.width, 0.7) * build

    # Skeleton with the hip centre at the origin, drawn in "facing +x" coordinates and mirrored
    # by `facing` at the end.
    lean = pose.lean
    up = _direction(180.0 - lean)
    across = (-up[1], up[0])  # perpendicular to the spine, pointing to +x when upright
    hip_c = (0.0, 0.0)
    sh_c = (up[0] * torso_len, up[1] * torso_len)
    head_c = (sh_c[0] + up[0] * (neck_len + head_r), sh_c[1] + up[1] * (neck_len + head_r))
    neck_top = (sh_c[0] + up[0] * neck_len, sh_c[1] + up[1] * neck_len)

    def off(p, k):
        return (p[0] + across[0] * k, p[1] + across[1] * k)

    torso = [off(sh_c, -sh_half), off(sh_c, sh_half), off(hip_c, hip_half), off(hip_c, -hip_half)]
    arm_attach = 0.8 * sh_half if not pose.side_view else 0.25 * sh_half
    leg_attach = 0.55 * hip_half if not pose.side_view else 0.2 * hip_half
    shoulders = (off(sh_c, -arm_attach), off(sh_c, arm_attach))
    hips = (off(hip_c, -leg_attach), off(hip_c, leg_attach))

    arms, legs = [], []
    for sh, (a1, a2) in zip(shoulders, pose.arms):
        elbow = _step(sh, upper_arm, a1)
        arms.append((sh, elbow, _step(elbow, fore_arm, a2)))
    for hp, (a1, a2) in zip(hips, pose.legs):
        knee = _step(hp, thigh_len, a1)
        ankle = _step(knee, shin_len, a2)
        toe = _step(ankle, 0.055 * H if pose.side_view else 0.03 * H, 90.0)
        legs.append((hp, knee, ankle, toe))

    lowest = max(max(leg[2][1], leg[3][1]) for leg in legs) + 0.5 * leg_t
    ox, oy = cx, cy_feet - lowest

    def place(p):
        return (ox + facing * p[0], oy + p[1])

    paint = _Painter(*shape)
    skin_c, shirt_c = _fig_colour(skin), _fig_colour(shirt)
    hair_c = _fig_colour(hair)
    shade = 0.8  # limbs on the far side sit in a little shadow, which also separates them

    def draw_leg(leg, k):
        hp, knee, ankle, toe = (place(p) for p in leg)
        paint.line(hp, knee, _fig_colour(trousers * k), leg_t)
        paint.line(knee, ankle, _fig_colour((skin if shorts else trousers) * k), leg_t * 0.9)
        paint.line(ankle, toe, _fig_colour(shoes * k), leg_t * 0.8)

    def draw_arm(arm, k):
        sh, elbow, wrist = (place(p) for p in arm)
        paint.line(sh, elbow, _fig_colour(shirt * k), arm_t)
        paint.line(elbow, wrist, _fig_colour((skin if short_sleeves else shirt) * k), arm_t * 0.9)
        paint.circle(wrist, arm_t * 0.6, _fig_colour(skin * k))

    if pose.side_view:
        draw_arm(arms[0], shade)
        draw_leg(legs[0], shade)
    else:
        draw_leg(legs[0], 1.0)
    if hair_style == 2:  # long hair hangs behind the head and shoulders
        paint.ellipse(place((head_c[0] - 0.3 * head_r, head_c[1] + 0.5 * head_r)),
                      (head_r * 1.1, head_r * 1.6), 0.0, 0.0, 360.0, hair_c)
    paint.polygon([place(p) for p in torso], shirt_c)
    draw_leg(legs[1], 1.0)
    if not pose.side_view:
        draw_arm(arms[0], 1.0)
    draw_arm(arms[1], 1.0)
    paint.line(place(neck_top), place(sh_c), skin_c, max(1.0, 0.45 * head_r))
    head = place(head_c)
    paint.circle(head, head_r, skin_c)
    if hair_style != 0:
        tilt = facing * lean
        paint.ellipse(head, (head_r * 1.05, head_r * 1.05), tilt, 180.0, 360.0, hair_c)
    return paint.layer, paint.mask


def _mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return None
    return (float(x), float(y), float(x + w), float(y + h))


def _render_on(
    shape: tuple[int, int], rng: np.random.Generator, cx: float, cy_feet: float, height: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Render one figure for an image of ``shape`` (H, W): returns its (H, W, 3) uint8 layer,
    its (H, W) 0/255 mask of in-image pixels and its pixel count including the off-image part.

    The figure is drawn in a window around itself (it spans about x = cx -/+ 0.55 * height and
    y = cy_feet - 1.2 * height .. cy_feet) and cropped: cheaper than a full canvas for small
    figures, and it tells how much of a border-cut figure is actually left in the image.
    """
    h, w = shape
    x0 = math.floor(cx - 0.7 * height) - 2
    y0 = math.floor(cy_feet - 1.4 * height) - 2
    win_w, win_h = math.ceil(1.4 * height) + 5, math.ceil(1.55 * height) + 5
    # Integer window offsets keep the fixed-point drawing coordinates an exact translation.
    layer, mask = _render_person((win_h, win_w), rng, cx - x0, cy_feet - y0, height)
    full_px = int(np.count_nonzero(mask))
    out_layer = np.zeros((h, w, 3), dtype=np.uint8)
    out_mask = np.zeros((h, w), dtype=np.uint8)
    ix0, ix1 = max(x0, 0), min(x0 + win_w, w)
    iy0, iy1 = max(y0, 0), min(y0 + win_h, h)
    if ix0 < ix1 and iy0 < iy1:
        src = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        out_layer[iy0:iy1, ix0:ix1] = layer[src]
        out_mask[iy0:iy1, ix0:ix1] = mask[src]
    return out_layer, out_mask, full_px


def draw_person(
    canvas: np.ndarray, rng: np.random.Generator, cx: float, cy_feet: float, height: float
) -> tuple[float, float, float, float] | None:
    """Draw one random human figure in place on an (H, W, 3) uint8 RGB ``canvas``.

    The figure's hips are centred on x = ``cx`` px, its lowest foot ends near y = ``cy_feet`` px
    and ``height`` is its nominal standing height in px (pose-dependent: sitting figures are
    shorter, raised arms reach higher). It may lie partly or wholly outside the canvas.

    Returns the tight box of the pixels it drew inside the canvas as ``(x1, y1, x2, y2)`` in px,
    x2/y2 exclusive (so ``x2 - x1`` is the width in px), or None if no pixel landed inside.
    """
    if canvas.ndim != 3 or canvas.shape[2] != 3 or canvas.dtype != np.uint8:
        raise ValueError(f"canvas must be an (H, W, 3) uint8 array, got {canvas.shape} {canvas.dtype}")
    layer, mask, _ = _render_on(canvas.shape[:2], rng, cx, cy_feet, height)
    box = _mask_box(mask)
    if box is not None:
        m = mask > 0
        canvas[m] = layer[m]
    return box


# ---------------------------------------------------------------------------------------------
# backgrounds and distractors


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


# ---------------------------------------------------------------------------------------------
# one image


def _place_people(rng: np.random.Generator, img: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Draw 0..3 figures in place on ``img``; return their (x1, y1, x2, y2) px boxes, x2/y2
    exclusive, each the tight box of that figure's own in-image pixels."""
    h, w = img.shape[:2]
    count = 0 if rng.random() < 0.05 else int(rng.integers(1, 4))
    owner = np.full((h, w), -1, dtype=np.int16)  # which figure is on top at each pixel
    boxes: list[tuple[float, float, float, float]] = []
    totals: list[int] = []
    visible = np.zeros(0, dtype=np.int64)
    lo, hi = math.log(_HEIGHT_FRAC[0]), math.log(_HEIGHT_FRAC[1])
    for _ in range(count):
        for _attempt in range(8):
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


def _render_image(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[float, float, float, float]]]:
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


def _yolo_lines(boxes, w: int, h: int) -> str:
    lines = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / (2.0 * w), (y1 + y2) / (2.0 * h)
        lines.append(f"0 {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------------------------------
# writer


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # spawn_key=(index,) is what SeedSequence(seed).spawn() hands child `index`: independent
    # streams per image that do not depend on how many images are written.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_synthetic_dataset(
    out_dir: Path,
    n: int = 600,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Write ``n`` synthetic images with YOLO labels directly into ``out_dir``.

    Files are ``synth_{i:06d}.jpg`` (RGB content, JPEG quality 90, width and height each
    96..256 px) and ``synth_{i:06d}.txt`` with one ``0 cx cy w h`` line per figure: class 0 =
    person, cxcywh normalized 0..1 by the image size, 6 decimals, the tight box of the figure's
    in-image pixels. Images hold 1..4 figures (about 5% hold none and get an empty .txt).

    Same ``seed`` gives byte-identical files; image ``i`` does not depend on ``n``.
    ``progress(done, n)`` is called after each image with ``done`` = 1..n.

    Raises FileExistsError if ``out_dir`` already holds any .jpg or .txt file (nothing is
    touched then), ValueError for a negative ``n`` or ``seed``.
    """
    out_dir = Path(out_dir)
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, got n={n}, seed={seed}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if any(p.suffix.lower() in (".jpg", ".txt") for p in out_dir.iterdir() if p.is_file()):
            raise FileExistsError(f"{out_dir} already contains .jpg/.txt files; refusing to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)

    num_boxes = 0
    for i in range(n):
        img, boxes = _render_image(_image_rng(seed, i))
        h, w = img.shape[:2]
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for image {i}")
        stem = f"synth_{i:06d}"
        # Label first: a reader that sees an image can always trust its label file exists.
        _atomic_write(out_dir / f"{stem}.txt", _yolo_lines(boxes, w, h).encode("ascii"))
        _atomic_write(out_dir / f"{stem}.jpg", jpg.tobytes())
        num_boxes += len(boxes)
        if progress is not None:
            progress(i + 1, n)
    return SynthReport(out_dir=out_dir, num_images=n, num_boxes=num_boxes)
