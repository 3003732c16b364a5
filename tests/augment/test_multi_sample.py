"""Tests for uhd_core/augment/multi_sample.py: Mosaic, MixUp, CopyPaste (ops that draw partner samples
from ``source``): box validity and alignment, exact pixel/box bookkeeping, determinism, YAML keys."""

from __future__ import annotations

import pickle
import warnings

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aug_helpers import assert_valid_pipeline_output, draw_op_case
from aug_helpers import no_boxes as _no_boxes
from aug_helpers import noise_image as _noise_image
from aug_helpers import single_op_pipeline as _pipe
from aug_helpers import to_cxcywh as _cxcywh
from aug_helpers import to_xyxy as _xyxy
from uhd_core.augment import (
    AUGMENT_OP_INFO,
    AUGMENT_OPS,
    UNIMPLEMENTED_OPS,
    AugmentPipeline,
    AugOpSpec,
    load_augment_specs,
    multi_sample,
)
from uhd_core.data.dataset import CachedDetectionDataset

S = 64
OPS = ("Mosaic", "MixUp", "CopyPaste")

PARAMS = {
    "Mosaic": st.just({}),
    "MixUp": st.just({}),
    "CopyPaste": st.fixed_dictionaries(
        {
            "sample_num": st.integers(0, 3),
            "max_paste_objects": st.integers(0, 6),
            "scale_jitter": st.sampled_from([[0.8, 1.2], [1.0, 1.0], [0.1, 3.0], [2.5, 4.0]]),
        }
    ),
}


def _random_samples(n: int, shape: tuple[int, int] = (S, S), seed: int = 0):
    """``n`` samples (image, boxes cxcywh, labels); sample k has 0..4 boxes labelled 10 * (k + 1) + i."""
    rng = np.random.default_rng(seed)
    samples = []
    for k in range(n):
        m = int(rng.integers(0, 5))
        lo = rng.uniform(0.0, 0.8, (m, 2))
        hi = np.minimum(lo + rng.uniform(0.03, 0.5, (m, 2)), 1.0)
        boxes = _cxcywh(np.concatenate([lo, hi], axis=1))
        samples.append((_noise_image(1000 + 17 * seed + k, shape), boxes, np.arange(m, dtype=np.int64) + 10 * (k + 1)))
    return samples


class ListSource:
    """``source(rng)``: a random sample of a fixed list (cxcywh, like the dataset); records the picks."""

    def __init__(self, samples) -> None:
        self.samples = samples
        self.picked: list[int] = []

    def __call__(self, rng: np.random.Generator):
        j = int(rng.integers(len(self.samples)))
        self.picked.append(j)
        return self.samples[j]


class QueueSource:
    """Hands out the given samples in order (ignores rng): for hand-made cases."""

    def __init__(self, samples) -> None:
        self.samples = list(samples)

    def __call__(self, rng: np.random.Generator):
        return self.samples.pop(0)


_SOURCES: dict[tuple[int, int], list] = {}


def _samples_for(shape: tuple[int, int]) -> list:
    if shape not in _SOURCES:
        _SOURCES[shape] = _random_samples(6, shape, seed=shape[0])
    return _SOURCES[shape]


# --- properties over random inputs ---------------------------------------------------------------


def _mosaic_windows(out: np.ndarray, images: list[np.ndarray]) -> list[tuple[int, int]]:
    """Every ``(x0, y0)`` for which ``out`` is the window of the 2x2 canvas of ``images``."""
    h, w = out.shape[:2]
    canvas = np.concatenate(
        [np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)], axis=0
    )
    ys, xs = np.nonzero((canvas[: h + 1, : w + 1] == out[0, 0]).all(axis=2))
    return [(int(x), int(y)) for x, y in zip(xs, ys) if np.array_equal(canvas[y : y + h, x : x + w], out)]


def _mosaic_expected_boxes(samples_xyxy, x0: int, y0: int, h: int, w: int):
    a, b = x0 / w, y0 / h
    shifts = ((-a, -b), (1 - a, -b), (-a, 1 - b), (1 - a, 1 - b))
    boxes = np.concatenate([bx + np.array([dx, dy, dx, dy]) for (bx, _), (dx, dy) in zip(samples_xyxy, shifts)])
    labels = np.concatenate([lb for _, lb in samples_xyxy])
    return np.clip(boxes, 0.0, 1.0), labels


def _matches_in_order(out_boxes, out_labels, exp_boxes, exp_labels, tol=1e-5) -> bool:
    """Output = expected minus boxes that vanished (area ~0), in the same order, labels aligned."""
    j = 0
    for box, label in zip(exp_boxes, exp_labels):
        if j < len(out_boxes) and out_labels[j] == label and np.allclose(out_boxes[j], box, atol=tol):
            j += 1
            continue
        area = max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0)
        if area > 2e-6:  # only boxes at the original's 1e-6 area threshold may go
            return False
    return j == len(out_boxes)


@pytest.mark.parametrize("name", OPS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_op_keeps_boxes_valid_and_aligned(name, data):
    params, shape, seed, xyxy, boxes, labels = draw_op_case(data, PARAMS[name])
    img = _noise_image(seed % 1000, shape)
    samples = _samples_for(shape)
    img_before, boxes_before = img.copy(), boxes.copy()
    samples_before = [tuple(x.copy() for x in s) for s in samples]

    out, ob, ol = _pipe(name, **params)(img, boxes, labels, np.random.default_rng(seed), source=ListSource(samples))

    assert_valid_pipeline_output(img, out, ob, ol)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(img, img_before)  # inputs (and the source's samples) untouched
    np.testing.assert_array_equal(boxes, boxes_before)
    for s, before in zip(samples, samples_before):
        for x, y in zip(s, before):
            np.testing.assert_array_equal(x, y)
    known = set(labels.tolist()).union(*(s[2].tolist() for s in samples))
    assert set(ol.tolist()) <= known

    # The op on its own (xyxy in/out, as the pipeline calls it): exact bookkeeping.
    source = ListSource(samples)

    def xyxy_source(rng):
        image, cxcywh, sample_labels = source(rng)
        return image, _xyxy(cxcywh), sample_labels

    op = AUGMENT_OPS[name](**params)
    assert op.needs_source
    raw_img, raw_boxes, raw_labels = op(img, xyxy, labels, np.random.default_rng(seed), xyxy_source)
    assert raw_img.shape == img.shape and raw_img.dtype == np.uint8
    assert raw_boxes.dtype == np.float32 and raw_boxes.shape == (len(raw_labels), 4)
    assert (raw_boxes >= 0).all() and (raw_boxes <= 1).all()
    partners = [samples[j] for j in source.picked]
    if name == "MixUp":
        (other, other_boxes, other_labels), = partners
        np.testing.assert_array_equal(raw_img, cv2.addWeighted(img, 0.5, other, 0.5, 0.0))
        np.testing.assert_allclose(raw_boxes, np.clip(np.concatenate([xyxy, _xyxy(other_boxes)]), 0, 1), atol=1e-6)
        assert raw_labels.tolist() == labels.tolist() + other_labels.tolist()
    elif name == "Mosaic":
        assert len(partners) == 3
        windows = _mosaic_windows(raw_img, [img] + [p[0] for p in partners])
        assert windows, "the output is not a window of the 2x2 canvas"
        samples_xyxy = [(xyxy, labels)] + [(_xyxy(p[1]), p[2]) for p in partners]
        assert any(
            _matches_in_order(raw_boxes, raw_labels, *_mosaic_expected_boxes(samples_xyxy, x0, y0, *shape))
            for x0, y0 in windows
        )
    else:  # CopyPaste: input boxes first (clipped, tiny ones dropped), then at most the allowed new ones
        per_sample = [min(params["max_paste_objects"], len(p[1])) for p in partners]
        assert len(partners) == params["sample_num"]
        n_new = len(raw_labels) - int(np.count_nonzero(raw_labels >= 100))
        assert 0 <= n_new <= sum(per_sample)
        assert _matches_in_order(raw_boxes[: len(raw_labels) - n_new], raw_labels[: len(raw_labels) - n_new],
                                 np.clip(xyxy, 0, 1), labels)
        assert (raw_labels[len(raw_labels) - n_new :] < 100).all()
        if n_new == 0:
            np.testing.assert_array_equal(raw_img, img)


@pytest.mark.parametrize("name", OPS)
def test_same_seed_same_output(name):
    samples = _random_samples(6)
    boxes = np.array([[0.5, 0.5, 0.3, 0.6], [0.15, 0.2, 0.2, 0.3], [0.9, 0.9, 0.2, 0.2]], dtype=np.float32)
    labels = np.array([0, 1, 2], dtype=np.int64)

    def run(pipe: AugmentPipeline, seed: int):
        rng = np.random.default_rng(seed)
        return [pipe(_noise_image(i), boxes, labels, rng, source=ListSource(samples)) for i in range(8)]

    pipe = _pipe(name)
    first = run(pipe, 7)
    run(pipe, 8)
    for again in (run(pipe, 7), run(_pipe(name), 7), run(pickle.loads(pickle.dumps(pipe)), 7)):
        for a, b in zip(first, again):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    other = run(pipe, 9)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


@pytest.mark.parametrize("name", OPS)
def test_without_source_raises(name):
    pipe = _pipe(name)
    assert pipe.needs_source
    with pytest.raises(ValueError, match=f"{name}.*source="):
        pipe(_noise_image(0), *_no_boxes(), np.random.default_rng(0))
    # prob 0: not built, so no source is needed
    assert not AugmentPipeline([AugOpSpec(name, 0.0, {})]).needs_source
    AugmentPipeline([AugOpSpec(name, 0.0, {})])(_noise_image(0), *_no_boxes(), np.random.default_rng(0))


# --- Mosaic --------------------------------------------------------------------------------------


def _square_sample(seed: int, label: int):
    """A noise image with one box over pixels [16, 48) x [16, 48)."""
    return _noise_image(seed), np.array([[0.5, 0.5, 0.5, 0.5]], np.float32), np.array([label], np.int64)


@pytest.mark.parametrize("x0,y0", [(32, 32), (20, 40), (0, 0), (64, 64)])
def test_mosaic_puts_each_sample_in_its_quadrant(monkeypatch, x0, y0):
    monkeypatch.setattr(multi_sample._Mosaic, "_offsets", lambda self, h, w, rng: (x0, y0))
    samples = [_square_sample(k, k) for k in range(4)]
    img, boxes, labels = samples[0]
    out, ob, ol = _pipe("Mosaic")(img, boxes, labels, np.random.default_rng(0), source=QueueSource(samples[1:]))
    sx, sy = S - x0, S - y0  # where the quadrants meet
    np.testing.assert_array_equal(out[:sy, :sx], samples[0][0][y0:, x0:])
    np.testing.assert_array_equal(out[:sy, sx:], samples[1][0][y0:, :x0])
    np.testing.assert_array_equal(out[sy:, :sx], samples[2][0][:y0, x0:])
    np.testing.assert_array_equal(out[sy:, sx:], samples[3][0][:y0, :x0])
    # Each box, [16, 48) in its own tile, shifted to its tile's place and clipped to its quadrant.
    expected = {}
    for k, (ox, oy) in enumerate([(0, 0), (S, 0), (0, S), (S, S)]):
        px = np.array([16 + ox - x0, 16 + oy - y0, 48 + ox - x0, 48 + oy - y0], dtype=np.float64)
        quadrant = [0 if ox == 0 else sx, 0 if oy == 0 else sy, sx if ox == 0 else S, sy if oy == 0 else S]
        px = np.clip(px, quadrant[:2] * 2, quadrant[2:] * 2)
        if px[2] - px[0] >= 1 and px[3] - px[1] >= 1:
            expected[k] = px
    assert ol.tolist() == sorted(expected)
    for box, label in zip(_xyxy(ob) * S, ol):
        np.testing.assert_allclose(box, expected[label], atol=1e-3)
    if (x0, y0) == (32, 32):  # the centred case: one 16x16 box in each quadrant's outer corner
        assert ol.tolist() == [0, 1, 2, 3]
        np.testing.assert_allclose(
            _xyxy(ob) * S, [[0, 0, 16, 16], [48, 0, 64, 16], [0, 48, 16, 64], [48, 48, 64, 64]], atol=1e-3
        )


def test_mosaic_offsets_cover_the_range():
    op = AUGMENT_OPS["Mosaic"]()
    rng = np.random.default_rng(0)
    offsets = np.array([op._offsets(48, S, rng) for _ in range(2000)])
    assert offsets[:, 0].min() == 0 and offsets[:, 0].max() == S - 1
    assert offsets[:, 1].min() == 0 and offsets[:, 1].max() == 47
    assert abs(offsets[:, 0].mean() - (S - 1) / 2) < 2.5


# --- MixUp ---------------------------------------------------------------------------------------


def test_mixup_keeps_the_union_of_boxes_and_averages_pixels():
    img = np.full((S, S, 3), 100, np.uint8)
    other = np.full((S, S, 3), 201, np.uint8)
    boxes = np.array([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]], np.float32)
    other_boxes = np.array([[0.5, 0.5, 0.1, 0.1], [0.2, 0.8, 0.2, 0.2], [0.9, 0.1, 0.1, 0.1]], np.float32)
    source = QueueSource([(other, other_boxes, np.array([7, 8, 9]))])
    out, ob, ol = _pipe("MixUp")(img, boxes, np.array([1, 2]), np.random.default_rng(0), source=source)
    assert ol.tolist() == [1, 2, 7, 8, 9]
    np.testing.assert_allclose(ob, np.concatenate([boxes, other_boxes]), atol=1e-6)
    assert set(np.unique(out)) <= {150, 151}  # (100 + 201) / 2, rounded
    # No boxes on either side: still a blend, no boxes.
    source = QueueSource([(other, *_no_boxes())])
    out, ob, ol = _pipe("MixUp")(img, *_no_boxes(), np.random.default_rng(0), source=source)
    assert ob.shape == (0, 4) and ol.shape == (0,) and set(np.unique(out)) <= {150, 151}


# --- CopyPaste -----------------------------------------------------------------------------------


def _paste_source_sample():
    img = _noise_image(77)
    px = np.array([[8, 8, 20, 28], [30, 4, 44, 12], [40, 36, 60, 60]], dtype=np.float32)  # whole pixels
    return img, _cxcywh(px / S), np.array([5, 6, 7], np.int64), px.astype(int)


def test_copy_paste_pastes_exact_source_crops():
    src_img, src_boxes, src_labels, src_px = _paste_source_sample()
    img = np.zeros((S, S, 3), np.uint8)
    boxes = np.array([[0.5, 0.5, 0.25, 0.25]], np.float32)
    pipe = _pipe("CopyPaste", sample_num=1, max_paste_objects=1, scale_jitter=[1.0, 1.0])
    seen = set()
    for seed in range(30):
        out, ob, ol = pipe(img, boxes, np.array([1]), np.random.default_rng(seed),
                           source=QueueSource([(src_img, src_boxes, src_labels)]))
        assert ol[0] == 1 and len(ol) == 2  # the original box kept, exactly one pasted
        np.testing.assert_allclose(ob[0], boxes[0], atol=1e-6)
        label = int(ol[1])
        seen.add(label)
        x1, y1, x2, y2 = src_px[label - 5]
        bx1, by1, bx2, by2 = np.round(_xyxy(ob[1:]) * S).astype(int)[0]
        np.testing.assert_allclose(_xyxy(ob[1:])[0] * S, [bx1, by1, bx2, by2], atol=1e-3)
        assert (bx2 - bx1, by2 - by1) == (x2 - x1, y2 - y1)
        np.testing.assert_array_equal(out[by1:by2, bx1:bx2], src_img[y1:y2, x1:x2])
        outside = np.ones((S, S), bool)
        outside[by1:by2, bx1:bx2] = False
        assert (out[outside] == 0).all()  # nothing else changed
    assert seen == {5, 6, 7}


def test_copy_paste_count_limits_and_scale():
    src_img, src_boxes, src_labels, _ = _paste_source_sample()
    img = _noise_image(3)
    for max_objects, sample_num in [(2, 1), (2, 3), (5, 2), (0, 2)]:
        pipe = _pipe("CopyPaste", sample_num=sample_num, max_paste_objects=max_objects)
        for seed in range(10):
            source = QueueSource([(src_img, src_boxes, src_labels)] * sample_num)
            _, ob, ol = pipe(img, *_no_boxes(), np.random.default_rng(seed), source=source)
            # Each partner gives min(max_paste_objects, its boxes) objects (all fit at this size).
            assert len(ol) == sample_num * min(max_objects, 3) and len(ob) == len(ol)
            k = min(max_objects, 3)
            for c in range(sample_num):  # no box twice from one partner
                assert len(set(ol[c * k : (c + 1) * k].tolist())) == k
    # scale_jitter 2: a 12x20 crop becomes 24x40 pixels; 4: a 20x24 crop is cut to the image.
    pipe = _pipe("CopyPaste", scale_jitter=[2.0, 2.0])
    _, ob, ol = pipe(img, *_no_boxes(), np.random.default_rng(0), source=QueueSource([(src_img, src_boxes[:1], [5])]))
    np.testing.assert_allclose(ob[0, 2:] * S, [24, 40], atol=1e-3)
    pipe = _pipe("CopyPaste", scale_jitter=[4.0, 4.0])
    out, ob, ol = pipe(img, *_no_boxes(), np.random.default_rng(0), source=QueueSource([(src_img, src_boxes[2:], [7])]))
    np.testing.assert_allclose(ob[0], [0.5, 0.5, 1.0, 1.0], atol=1e-6)
    assert out.shape == img.shape
    # A partner without boxes pastes nothing.
    source = QueueSource([(src_img, *_no_boxes())])
    out, ob, _ = _pipe("CopyPaste")(img, *_no_boxes(), np.random.default_rng(0), source=source)
    np.testing.assert_array_equal(out, img)
    assert ob.shape == (0, 4)


# --- YAML, registry, dataset ---------------------------------------------------------------------


def test_yaml_keys_and_default_probs(tmp_path):
    assert not set(OPS) & set(UNIMPLEMENTED_OPS)
    path = tmp_path / "aug.yaml"
    path.write_text(
        "data_augment:\n  Mosaic: {}\n  MixUp:\n    prob: 0.2\n  CopyPaste:\n    sample_num: 2\n"
        "    max_paste_objects: 3\n    scale_jitter: [0.5, 1.5]\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        specs = load_augment_specs(path)
    assert specs == [
        AugOpSpec("Mosaic", 1.0, {}),  # the original's default without prob
        AugOpSpec("MixUp", 0.2, {}),
        AugOpSpec("CopyPaste", 0.3, {"sample_num": 2, "max_paste_objects": 3, "scale_jitter": [0.5, 1.5]}),
    ]
    assert [AUGMENT_OP_INFO[n].default_prob for n in OPS] == [1.0, 1.0, 0.3]
    path.write_text("data_augment:\n  Mosaic:\n  MixUp: 0.1\n  CopyPaste:\n")  # empty = disabled, bare = prob
    assert [(s.name, s.prob) for s in load_augment_specs(path)] == [("Mosaic", 0.0), ("MixUp", 0.1), ("CopyPaste", 0.0)]
    path.write_text("data_augment:\n  MixUp:\n    prob: 0.5\n    alpha: 8.0\n")
    with pytest.warns(UserWarning, match="MixUp.*alpha"):
        load_augment_specs(path)


@pytest.mark.parametrize(
    "spec",
    [
        AugOpSpec("CopyPaste", 1.0, {"sample_num": -1}),
        AugOpSpec("CopyPaste", 1.0, {"sample_num": 1.5}),
        AugOpSpec("CopyPaste", 1.0, {"max_paste_objects": "many"}),
        AugOpSpec("CopyPaste", 1.0, {"scale_jitter": [1.2, 0.8]}),
        AugOpSpec("CopyPaste", 1.0, {"scale_jitter": [0.0, 1.0]}),
    ],
)
def test_bad_values_fail_at_build(spec):
    with pytest.raises(ValueError, match=spec.name):
        AugmentPipeline([spec])


def test_cached_dataset_with_mosaic_returns_valid_items():
    samples = _random_samples(5, seed=3)
    samples[0] = (samples[0][0], np.array([[0.5, 0.5, 0.4, 0.4]], np.float32), np.array([0]))
    images = np.stack([s[0] for s in samples])
    pipe = AugmentPipeline([AugOpSpec("Mosaic", 1.0, {}), AugOpSpec("MixUp", 0.5, {}), AugOpSpec("CopyPaste", 0.5, {})])
    ds = CachedDetectionDataset(images, [s[1] for s in samples], [s[2] for s in samples], augment=pipe, seed=1)
    before = images.copy()
    all_labels = set().union(*(s[2].tolist() for s in samples))
    n_boxes = 0
    for epoch in range(3):
        for i in range(len(ds)):
            img, boxes, labels = ds[(i, epoch)]
            assert img.shape == (S, S, 3) and img.dtype == np.uint8
            assert boxes.dtype == np.float32 and boxes.shape == (len(labels), 4) and labels.dtype == np.int64
            if len(boxes):
                assert (_xyxy(boxes) >= -1e-6).all() and (_xyxy(boxes) <= 1 + 1e-6).all()
                assert (boxes[:, 2:] > 0).all()
            assert set(labels.tolist()) <= all_labels
            n_boxes += len(labels)
            again = ds[(i, epoch)]
            for x, y in zip((img, boxes, labels), again):
                np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(images, before)  # the cache is never written into
    assert n_boxes > 0
