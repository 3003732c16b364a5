"""Helpers shared by the augmentation op tests (pytest puts tests/augment on sys.path)."""

from __future__ import annotations

import numpy as np

from uhd_core.augment import AugmentPipeline, AugOpSpec

#: Side of the square test images.
S = 64


def noise_image(seed: int, shape: tuple[int, int] = (S, S)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


def single_op_pipeline(name: str, **params) -> AugmentPipeline:
    """A pipeline of op ``name`` alone, always applied."""
    return AugmentPipeline([AugOpSpec(name, 1.0, params)])


def to_xyxy(cxcywh: np.ndarray) -> np.ndarray:
    c, wh = cxcywh[:, :2], cxcywh[:, 2:]
    return np.concatenate([c - wh / 2, c + wh / 2], axis=1)


def to_cxcywh(xyxy: np.ndarray) -> np.ndarray:
    return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], axis=1).astype(np.float32)


def no_boxes() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.int64)


def draw_boxes(data, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random boxes (hypothesis ``data``) as (xyxy, cxcywh); corners lie anywhere in
    [-0.25, 1.25]: inputs may stick out of the image and degenerate boxes are allowed."""
    import hypothesis.strategies as st

    corners = np.array(
        data.draw(st.lists(st.floats(-0.25, 1.25), min_size=4 * n, max_size=4 * n), label="corners"),
        dtype=np.float32,
    ).reshape(n, 4)
    xyxy = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], 1)
    return xyxy, to_cxcywh(xyxy)


def draw_op_case(data, params_strategy) -> tuple[dict, tuple[int, int], int, np.ndarray, np.ndarray, np.ndarray]:
    """One hypothesis case for an op: (params, image shape, seed, boxes xyxy, boxes cxcywh, labels).

    Labels are unique (100, 101, ...) so that alignment with the boxes can be checked."""
    from hypothesis import strategies as st

    params = data.draw(params_strategy, label="params")
    shape = data.draw(st.sampled_from([(S, S), (48, S)]), label="shape")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    n = data.draw(st.integers(0, 6), label="n_boxes")
    xyxy, boxes = draw_boxes(data, n)
    return params, shape, seed, xyxy, boxes, np.arange(100, 100 + n, dtype=np.int64)


def assert_valid_pipeline_output(image: np.ndarray, out: np.ndarray, boxes: np.ndarray, labels: np.ndarray) -> None:
    """What any pipeline output must be: same image shape, uint8; float32 cxcywh boxes inside 0..1 with
    w, h > 0, one int64 label per box."""
    assert out.shape == image.shape and out.dtype == np.uint8
    assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4) and labels.dtype == np.int64
    if len(boxes):
        corners = to_xyxy(boxes)
        assert (corners >= -1e-6).all() and (corners <= 1 + 1e-6).all()
        assert (boxes[:, 2:] > 0).all()
