"""One synthetic human figure: a random pose and look, its skeleton, and drawing it with its mask.

A figure is a head, a torso, two two-segment arms and two two-segment legs (plus feet), drawn
with the primitives of :mod:`uhd_core.data.synth.paint`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from uhd_core.data.synth.paint import _Painter, _direction, _fig_colour, _hsv_colour, _jitter, _step

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


@dataclass
class _Look:
    """Clothes, colours and build of one figure (float32 RGB colours, 0..255)."""

    facing: float  # +1 faces +x, -1 is mirrored
    build: float  # 0.85 slim .. 1.2 broad
    skin: np.ndarray
    shirt: np.ndarray
    trousers: np.ndarray
    shoes: np.ndarray
    hair: np.ndarray
    short_sleeves: bool
    shorts: bool
    hair_style: int  # 0 none, 1 short, 2 long


def _sample_look(rng: np.random.Generator) -> _Look:
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
    return _Look(facing, build, skin, shirt, trousers, shoes, hair, short_sleeves, shorts, hair_style)


Point = tuple[float, float]


@dataclass
class _Skeleton:
    """Joint positions in px with the hip centre at the origin, in "facing +x" coordinates."""

    head_c: Point
    head_r: float
    neck_top: Point
    sh_c: Point  # shoulder centre
    torso: list[Point]  # 4 corners: shoulders then hips
    arms: list[tuple[Point, Point, Point]]  # (shoulder, elbow, wrist), far then near
    legs: list[tuple[Point, Point, Point, Point]]  # (hip, knee, ankle, toe), far then near
    arm_t: float  # limb thicknesses in px
    leg_t: float


def _skeleton(rng: np.random.Generator, pose: _Pose, build: float, H: float) -> _Skeleton:
    """The joints of a figure of nominal height ``H`` px (draws its head size and torso length)."""
    head_r = 0.065 * H * rng.uniform(0.9, 1.1)
    torso_len = 0.30 * H * rng.uniform(0.92, 1.08)
    neck_len = 0.035 * H
    upper_arm, fore_arm = 0.16 * H, 0.15 * H
    thigh_len, shin_len = 0.245 * H, 0.245 * H
    arm_t = max(1.0, 0.048 * H * build)
    leg_t = max(1.0, 0.068 * H * build)
    sh_half = 0.105 * H * pose.width * build
    hip_half = 0.075 * H * max(pose.width, 0.7) * build

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
    return _Skeleton(head_c, head_r, neck_top, sh_c, torso, arms, legs, arm_t, leg_t)


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
    look = _sample_look(rng)
    body = _skeleton(rng, pose, look.build, H)
    return _paint_figure(shape, pose, look, body, cx, cy_feet)


def _paint_figure(shape: tuple[int, int], pose: _Pose, look: _Look, body: _Skeleton, cx: float,
                  cy_feet: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``body`` (mirrored by ``look.facing``, lowest foot at ``cy_feet``, hips at ``cx``), back to front."""
    facing, head_c, head_r = look.facing, body.head_c, body.head_r
    lowest = max(max(leg[2][1], leg[3][1]) for leg in body.legs) + 0.5 * body.leg_t
    ox, oy = cx, cy_feet - lowest

    def place(p):
        return (ox + facing * p[0], oy + p[1])

    paint = _Painter(*shape)
    skin, shirt, trousers, shoes = look.skin, look.shirt, look.trousers, look.shoes
    skin_c, shirt_c = _fig_colour(skin), _fig_colour(shirt)
    hair_c = _fig_colour(look.hair)
    shade = 0.8  # limbs on the far side sit in a little shadow, which also separates them
    arm_t, leg_t = body.arm_t, body.leg_t

    def draw_leg(leg, k):
        hp, knee, ankle, toe = (place(p) for p in leg)
        paint.line(hp, knee, _fig_colour(trousers * k), leg_t)
        paint.line(knee, ankle, _fig_colour((skin if look.shorts else trousers) * k), leg_t * 0.9)
        paint.line(ankle, toe, _fig_colour(shoes * k), leg_t * 0.8)

    def draw_arm(arm, k):
        sh, elbow, wrist = (place(p) for p in arm)
        paint.line(sh, elbow, _fig_colour(shirt * k), arm_t)
        paint.line(elbow, wrist, _fig_colour((skin if look.short_sleeves else shirt) * k), arm_t * 0.9)
        paint.circle(wrist, arm_t * 0.6, _fig_colour(skin * k))

    arms, legs = body.arms, body.legs
    if pose.side_view:
        draw_arm(arms[0], shade)
        draw_leg(legs[0], shade)
    else:
        draw_leg(legs[0], 1.0)
    if look.hair_style == 2:  # long hair hangs behind the head and shoulders
        paint.ellipse(place((head_c[0] - 0.3 * head_r, head_c[1] + 0.5 * head_r)),
                      (head_r * 1.1, head_r * 1.6), 0.0, 0.0, 360.0, hair_c)
    paint.polygon([place(p) for p in body.torso], shirt_c)
    draw_leg(legs[1], 1.0)
    if not pose.side_view:
        draw_arm(arms[0], 1.0)
    draw_arm(arms[1], 1.0)
    paint.line(place(body.neck_top), place(body.sh_c), skin_c, max(1.0, 0.45 * head_r))
    head = place(head_c)
    paint.circle(head, head_r, skin_c)
    if look.hair_style != 0:
        tilt = facing * pose.lean
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
