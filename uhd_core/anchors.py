"""Anchor fitting for the YOLO-style anchor head: k-means with 1 - IoU distance, genetic refinement,
and a report of how well a set of anchors covers a dataset's boxes.

Every box and anchor here is a normalized ``(w, h)`` pair (fractions of the image width/height,
0..1), so the anchors do not depend on ``--img-size``. Arrays are float64 ``(N, 2)`` for boxes and
``(K, 2)`` for anchors; returned anchors are sorted by area, smallest first.

The matching rule is YOLOv5's: a box and an anchor "match" when neither side differs by more than a
factor ``ANCHOR_T`` (see `ratio_metric`).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from uhd_core.errors import ConfigError

#: A box is matched by an anchor when ratio_metric > 1 / ANCHOR_T (YOLOv5's anchor_t).
ANCHOR_T = 4.0

#: Lower clip of evolved anchor sides (normalized); keeps mutation away from zero/negative sizes.
_MIN_SIDE = 1e-4


def _as_wh(values: Any, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) of (w, h) pairs, got {arr.shape}")
    if arr.size and not (np.isfinite(arr).all() and (arr > 0).all()):
        raise ValueError(f"{name} must hold finite positive widths and heights")
    return arr


def _sort_by_area(anchors: np.ndarray) -> np.ndarray:
    return anchors[np.argsort(anchors[:, 0] * anchors[:, 1], kind="stable")]


# ------------------------------------------------------------------------------------------------
# Metrics

def wh_iou(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU of boxes and anchors placed at a common centre.

    wh: (N, 2) box (w, h); anchors: (K, 2) anchor (w, h). Returns (N, K) in 0..1:
    ``min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah))``.
    """
    wh = _as_wh(wh, "wh")
    anchors = _as_wh(anchors, "anchors")
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / union


def ratio_metric(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """YOLOv5's size-ratio metric of every box against every anchor.

    wh: (N, 2); anchors: (K, 2). Returns (N, K) in (0, 1]:
    ``r[n, k] = min(w/aw, aw/w, h/ah, ah/h)``, i.e. the reciprocal of the worst side ratio. It is 1
    for an exact match and 1/4 when one side is 4x too large or too small. A box counts as matched
    by anchor k when ``r[n, k] > 1 / ANCHOR_T``; a box's best metric is ``r[n].max()``.
    """
    wh = _as_wh(wh, "wh")
    anchors = _as_wh(anchors, "anchors")
    r = wh[:, None, :] / anchors[None, :, :]  # (N, K, 2)
    return np.minimum(r, 1.0 / r).min(axis=2)


def anchor_fitness(wh: np.ndarray, anchors: np.ndarray) -> float:
    """YOLOv5 autoanchor fitness: mean over boxes of the best ratio metric, counting 0 where the
    best metric is <= 1/ANCHOR_T. wh: (N, 2); anchors: (K, 2). Higher is better, at most 1."""
    best = ratio_metric(wh, anchors).max(axis=1)
    return float(np.where(best > 1.0 / ANCHOR_T, best, 0.0).mean())


# ------------------------------------------------------------------------------------------------
# Fitting

def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, max_iter: int = 300) -> np.ndarray:
    """k-means of box sizes with distance 1 - IoU (YOLOv2's dimension clusters).

    wh: (N, 2) normalized box sizes. Returns (k, 2) anchors sorted by area; deterministic per seed.

    Method: k-means++ seeding on the 1 - IoU distance, then Lloyd iterations that assign each box to
    the anchor of highest `wh_iou` and move each anchor to the per-side *median* of its boxes
    (robust to the long tail of large boxes). scipy's Euclidean k-means on whitened (w, h) is not
    used: Euclidean distance over-weights large boxes, which is what the IoU distance avoids.

    With at most k distinct sizes there is nothing to cluster: the distinct sizes are returned
    (fewer than k, with a warning, when there are fewer); duplicated anchors are never returned.
    """
    wh = _as_wh(wh, "wh")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(wh) == 0:
        raise ValueError("kmeans_anchors needs at least one box")
    unique = np.unique(wh, axis=0)
    if len(unique) <= k:
        if len(unique) < k:
            warnings.warn(f"only {len(unique)} distinct box sizes for {k} anchors: returning {len(unique)} anchors",
                          stacklevel=2)
        return _sort_by_area(unique)

    rng = np.random.default_rng(seed)
    # k-means++ seeding: each next centre is drawn with probability proportional to its squared
    # distance (1 - best IoU) to the centres chosen so far, drawn among distinct sizes only.
    centres = [unique[rng.integers(len(unique))]]
    for _ in range(1, k):
        dist = 1.0 - wh_iou(unique, np.asarray(centres)).max(axis=1)
        p = dist**2
        centres.append(unique[rng.choice(len(unique), p=p / p.sum())])
    anchors = np.asarray(centres)

    assign = None
    for _ in range(max_iter):
        new_assign = wh_iou(wh, anchors).argmax(axis=1)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for j in range(k):
            members = wh[assign == j]
            if len(members):
                anchors[j] = np.median(members, axis=0)
            else:  # an emptied cluster restarts at the box worst covered by the others
                anchors[j] = wh[wh_iou(wh, anchors).max(axis=1).argmin()]
    anchors = np.unique(anchors, axis=0)
    if len(anchors) < k:
        warnings.warn(f"k-means converged to {len(anchors)} distinct anchors for k={k}", stacklevel=2)
    return _sort_by_area(anchors)


def evolve_anchors(wh: np.ndarray, anchors: np.ndarray, generations: int = 1000, seed: int = 0,
                   mutation_prob: float = 0.9, sigma: float = 0.1) -> np.ndarray:
    """YOLOv5 autoanchor-style genetic refinement of anchors.

    wh: (N, 2) box sizes; anchors: (K, 2) start. Each generation multiplies every anchor side, with
    probability ``mutation_prob``, by ``1 + s * sigma * randn`` (``s`` uniform 0..1 per generation,
    factor clipped to 0.3..3) and keeps the mutant only if `anchor_fitness` strictly improves, so
    the fitness never decreases. Returns (K, 2) sorted by area; deterministic per seed.
    """
    wh = _as_wh(wh, "wh")
    best = _as_wh(anchors, "anchors").copy()
    if generations < 0:
        raise ValueError(f"generations must be >= 0, got {generations}")
    rng = np.random.default_rng(seed)
    best_fit = anchor_fitness(wh, best)
    for _ in range(generations):
        v = np.ones_like(best)
        while (v == 1).all():  # mutate at least one side
            v = ((rng.random(best.shape) < mutation_prob) * rng.random() * rng.standard_normal(best.shape) * sigma
                 + 1.0).clip(0.3, 3.0)
        candidate = (best * v).clip(_MIN_SIDE, 1.0)
        fit = anchor_fitness(wh, candidate)
        if fit > best_fit:
            best, best_fit = candidate, fit
    return _sort_by_area(best)


def fit_anchors(wh: np.ndarray, k: int, seed: int = 0, evolve_generations: int = 1000) -> np.ndarray:
    """k-means (1 - IoU) then, if ``evolve_generations > 0``, genetic refinement.

    wh: (N, 2) normalized box sizes. Returns (<= k, 2) anchors sorted by area (fewer than k only
    when there are fewer distinct box sizes, with a warning).
    """
    anchors = kmeans_anchors(wh, k, seed)
    if evolve_generations > 0:
        anchors = evolve_anchors(wh, anchors, evolve_generations, seed)
    return anchors


# ------------------------------------------------------------------------------------------------
# Report

@dataclass(frozen=True)
class AnchorStat:
    """One anchor: normalized size and how many boxes have it as their highest-IoU anchor."""

    w: float
    h: float
    num_best_matched: int


@dataclass(frozen=True)
class AnchorReport:
    """How well anchors cover a set of boxes (all values JSON-safe)."""

    anchors: tuple[AnchorStat, ...]
    num_boxes: int
    mean_best_iou: float  # mean over boxes of max_k wh_iou
    bpr: float  # best possible recall: share of boxes whose best ratio metric > 1/ANCHOR_T
    anchors_above_threshold: float  # mean number of anchors per box with ratio metric > 1/ANCHOR_T
    fitness: float  # anchor_fitness, what evolve_anchors maximises

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["anchors"] = [asdict(a) for a in self.anchors]
        return out


def anchor_report(wh: np.ndarray, anchors: np.ndarray) -> AnchorReport:
    """Coverage statistics of anchors (K, 2) over boxes wh (N, 2), both normalized (w, h)."""
    wh = _as_wh(wh, "wh")
    anchors = _as_wh(anchors, "anchors")
    if len(wh) == 0 or len(anchors) == 0:
        raise ValueError("anchor_report needs at least one box and one anchor")
    iou = wh_iou(wh, anchors)
    counts = np.bincount(iou.argmax(axis=1), minlength=len(anchors))
    r = ratio_metric(wh, anchors)
    thr = 1.0 / ANCHOR_T
    best = r.max(axis=1)
    return AnchorReport(
        anchors=tuple(AnchorStat(float(a[0]), float(a[1]), int(c)) for a, c in zip(anchors, counts)),
        num_boxes=int(len(wh)),
        mean_best_iou=float(iou.max(axis=1).mean()),
        bpr=float((best > thr).mean()),
        anchors_above_threshold=float((r > thr).sum(axis=1).mean()),
        fitness=float(np.where(best > thr, best, 0.0).mean()),
    )


# ------------------------------------------------------------------------------------------------
# Strings and data

def parse_anchor_string(text: str) -> np.ndarray:
    """``"0.08,0.10 0.15,0.20"`` -> (K, 2) float64, parsed exactly as RunConfig's ``--anchors``.

    Raises ConfigError for a malformed string, an empty one, or sides outside (0, 1].
    """
    from pydantic import ValidationError

    from uhd_core.config import RunConfig, format_validation_error

    try:
        pairs = RunConfig.model_validate({"anchors": text}).anchors
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    if not pairs:
        raise ConfigError("--anchors: give at least one 'w,h' pair, e.g. '0.08,0.10 0.15,0.20'")
    arr = np.asarray(pairs, dtype=np.float64)
    if not (np.isfinite(arr).all() and (arr > 0).all() and (arr <= 1).all()):
        raise ConfigError(f"--anchors: sides are normalized and must be within (0, 1], got {text!r}")
    return arr


def format_anchor_string(anchors: np.ndarray | Sequence[Sequence[float]]) -> str:
    """(K, 2) anchors -> ``"0.081234,0.104321 ..."`` (6 decimals), the form ``--anchors`` takes."""
    return " ".join(f"{w:.6f},{h:.6f}" for w, h in np.asarray(anchors, dtype=np.float64).reshape(-1, 2))


def box_sizes(boxes: Sequence[np.ndarray]) -> np.ndarray:
    """Per-image (N_i, 4) cxcywh arrays -> all (w, h) pairs, (N, 2) float64 (N may be 0)."""
    nonempty = [b for b in boxes if len(b)]
    if not nonempty:
        return np.zeros((0, 2), dtype=np.float64)
    return np.concatenate(nonempty, axis=0)[:, 2:4].astype(np.float64)
