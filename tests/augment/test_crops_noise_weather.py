"""Tests for uhd_core/augment/crops_noise_weather.py: RandomCrop, RandomResizedCrop, RandomPhotometricDistort,
ISONoise, RandomRain, RandomFog, RandomSunFlare (box consistency, determinism, YAML keys)."""

from __future__ import annotations

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
    AUGMENT_OPS,
    UNIMPLEMENTED_OPS,
    AugmentPipeline,
    AugOpSpec,
    build_augment_pipeline,
    load_augment_specs,
)

S = 64
NEW_OPS = (
    "RandomCrop",
    "RandomResizedCrop",
    "RandomPhotometricDistort",
    "ISONoise",
    "RandomRain",
    "RandomFog",
    "RandomSunFlare",
)
BOX_MOVING = {"RandomCrop", "RandomResizedCrop"}
NEEDS_DATASET = {"Mosaic", "MixUp", "CopyPaste"}

# Parameters drawn per example on top of the defaults (strong settings included).
PARAMS = {
    "RandomCrop": st.fixed_dictionaries({"ratio": st.floats(0.05, 1.0)}),
    "RandomResizedCrop": st.fixed_dictionaries(
        {
            "scale": st.tuples(st.floats(0.02, 1.0), st.floats(0.02, 1.0)).map(sorted),
            "ratio": st.sampled_from([[0.75, 1.33], [0.3, 3.0], [1.0, 1.0]]),
            "min_visibility": st.floats(0.0, 1.0),
        }
    ),
    "RandomPhotometricDistort": st.fixed_dictionaries({"distort_prob": st.floats(0.0, 1.0)}),
    "ISONoise": st.just({}),
    "RandomRain": st.fixed_dictionaries({"density": st.sampled_from([[0.002, 0.006], [0.0, 0.03]])}),
    "RandomFog": st.just({}),
    "RandomSunFlare": st.fixed_dictionaries({"src_radius_range": st.sampled_from([[50, 150], [0, 20]])}),
}


# --- properties over random inputs ---------------------------------------------------------------


@pytest.mark.parametrize("name", NEW_OPS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_op_keeps_boxes_valid_and_aligned(name, data):
    params, shape, seed, xyxy, boxes, labels = draw_op_case(data, PARAMS[name])
    img = _noise_image(seed % 1000, shape)
    img_before, boxes_before = img.copy(), boxes.copy()

    out, ob, ol = _pipe(name, **params)(img, boxes, labels, np.random.default_rng(seed))

    assert_valid_pipeline_output(img, out, ob, ol)
    np.testing.assert_array_equal(img, img_before)  # inputs untouched
    np.testing.assert_array_equal(boxes, boxes_before)
    # Labels stay aligned: a subsequence of the input, in order, never duplicated.
    assert set(ol.tolist()) <= set(labels.tolist()) and (np.diff(ol) > 0).all()
    # The op on its own (xyxy in, as the pipeline calls it) already returns clipped, aligned boxes.
    raw_img, raw_boxes, raw_labels = AUGMENT_OPS[name](**params)(img, xyxy, labels, np.random.default_rng(seed))
    assert raw_img.flags.c_contiguous  # the next op may hand it to OpenCV as an output array
    assert raw_boxes.shape == (len(raw_labels), 4)
    if name in BOX_MOVING:
        assert (raw_boxes >= 0).all() and (raw_boxes <= 1).all()
        assert set(ol.tolist()) <= set(raw_labels.tolist())
    if name not in BOX_MOVING:  # pixel-only ops: exactly what the empty pipeline gives
        ref_boxes, ref_labels = AugmentPipeline([])(img, boxes, labels, np.random.default_rng(0))[1:]
        np.testing.assert_array_equal(ob, ref_boxes)
        np.testing.assert_array_equal(ol, ref_labels)


@pytest.mark.parametrize("name", NEW_OPS)
def test_same_seed_same_output(name):
    boxes = np.array([[0.5, 0.5, 0.3, 0.6], [0.15, 0.2, 0.2, 0.3], [0.9, 0.9, 0.2, 0.2]], dtype=np.float32)
    labels = np.array([0, 1, 2], dtype=np.int64)

    def run(pipe: AugmentPipeline, seed: int):
        rng = np.random.default_rng(seed)
        return [pipe(_noise_image(i), boxes, labels, rng) for i in range(8)]

    pipe = _pipe(name)
    first = run(pipe, 7)
    run(pipe, 8)  # state left over from other calls must not matter ...
    for again in (run(pipe, 7), run(_pipe(name), 7)):  # ... nor which instance runs
        for a, b in zip(first, again):
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
    other = run(pipe, 9)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


# --- RandomCrop ----------------------------------------------------------------------------------


def test_random_crop_keeps_inside_box_exactly_relative_to_window():
    ratio = 0.75  # 48x48 window, offsets 0..16: pixels [20, 44) x [18, 40) are always inside
    pipe = _pipe("RandomCrop", ratio=ratio)
    op = AUGMENT_OPS["RandomCrop"](ratio=ratio)
    img = _noise_image(3)
    inside = np.array([[20, 18, 44, 40]], dtype=np.float32) / S
    outside = np.array([[0, 0, 6, 6]], dtype=np.float32) / S  # gone when the offset is >= 6 px
    boxes = _cxcywh(np.concatenate([inside, outside]))
    labels = np.array([5, 6], dtype=np.int64)
    offsets = set()
    for seed in range(25):
        x0, y0, x1, y1 = op._window(S, S, np.random.default_rng(seed))  # the op's first draw
        assert (x1 - x0, y1 - y0) == (48, 48)
        offsets.add((x0, y0))
        out, ob, ol = pipe(img, boxes, labels, np.random.default_rng(seed))
        expected = (inside * S - [x0, y0, x0, y0]) / 48.0
        assert ol[0] == 5
        np.testing.assert_allclose(_xyxy(ob[:1]), expected, atol=1e-6)
        np.testing.assert_array_equal(out, cv2.resize(img[y0:y1, x0:x1], (S, S), interpolation=cv2.INTER_LINEAR))
        if x0 >= 6 or y0 >= 6:
            assert ol.tolist() == [5]
        else:
            assert ol.tolist() == [5, 6]
    assert len(offsets) > 10


def test_random_crop_ratio_one_is_identity():
    img = _noise_image(0)
    boxes = np.array([[0.4, 0.5, 0.2, 0.3]], dtype=np.float32)
    out, ob, _ = _pipe("RandomCrop", ratio=1.0)(img, boxes, np.array([1]), np.random.default_rng(0))
    np.testing.assert_array_equal(out, img)
    np.testing.assert_allclose(ob, boxes, atol=1e-6)


# --- RandomResizedCrop ---------------------------------------------------------------------------


def test_random_resized_crop_min_visibility_drops_cut_box_keeps_central():
    pipe = _pipe("RandomResizedCrop", scale=[0.25, 0.25], ratio=[1.0, 1.0], min_visibility=0.5)
    op = AUGMENT_OPS["RandomResizedCrop"](scale=[0.25, 0.25], ratio=[1.0, 1.0], min_visibility=0.5)
    img = _noise_image(1)
    for seed in range(20):
        x0, y0, x1, y1 = next(op._windows(img.shape, np.random.default_rng(seed)))
        assert (x1 - x0, y1 - y0) == (32, 32)
        mx, my = (x0 + x1) / 2, (y0 + y1) / 2
        central = [mx - 6, my - 6, mx + 6, my + 6]
        # 10 px wide boxes straddling the window's left or right edge (whichever has room outside):
        # 2 px inside (20% visible) -> dropped; 7 px inside (70%) -> kept, clipped to the window.
        if x0 >= 8:
            cut, half = [x0 - 8, my - 4, x0 + 2, my + 4], [x0 - 3, my - 12, x0 + 7, my - 6]
        else:
            cut, half = [x1 - 2, my - 4, x1 + 8, my + 4], [x1 - 7, my - 12, x1 + 3, my - 6]
        px = np.array([cut, central, half], dtype=np.float32)
        out, ob, ol = pipe(img, _cxcywh(px / S), np.array([1, 2, 3]), np.random.default_rng(seed))
        assert ol.tolist() == [2, 3], f"seed {seed}"
        win = np.array([x0, y0, x0, y0], dtype=np.float32)
        np.testing.assert_allclose(_xyxy(ob[:1]), [(np.array(central) - win) / 32], atol=1e-5)
        clipped = np.clip(px[2], [x0, y0, x0, y0], [x1, y1, x1, y1])
        np.testing.assert_allclose(_xyxy(ob[1:]), [(clipped - win) / 32], atol=1e-5)
        assert out.shape == img.shape


def test_random_resized_crop_never_drops_every_box():
    # One small corner box that must stay fully visible: the op redraws windows (or leaves the
    # sample alone) rather than returning a crop without it.
    pipe = _pipe("RandomResizedCrop", scale=[0.3, 0.5], min_visibility=1.0)
    img = _noise_image(2)
    box = np.array([[0.1, 0.1, 0.1, 0.1]], dtype=np.float32)
    kept_cropped = 0
    for seed in range(30):
        out, _, ol = pipe(img, box, np.array([4]), np.random.default_rng(seed))
        assert ol.tolist() == [4]
        kept_cropped += not np.array_equal(out, img)
    assert kept_cropped > 0


def test_random_resized_crop_without_boxes_always_crops():
    pipe = _pipe("RandomResizedCrop", scale=[0.3, 0.3])
    img = _noise_image(4)
    out, ob, ol = pipe(img, *_no_boxes(), np.random.default_rng(0))
    assert not np.array_equal(out, img) and ob.shape == (0, 4) and ol.shape == (0,)


# --- pixel ops -----------------------------------------------------------------------------------


def test_pixel_ops_take_effect():
    grey = np.full((S, S, 3), 100, dtype=np.uint8)
    rng = np.random.default_rng(0)
    out, _, _ = _pipe("RandomFog", fog_coef=[0.5, 0.5])(grey, *_no_boxes(), rng)
    assert 100 + 0.5 * (0.7 * 255 - 100) - 1 <= out.min() and out.max() <= 100 + 0.5 * (255 - 100) + 1
    assert (out == out[0, 0]).all()  # uniform haze
    noisy, _, _ = _pipe("ISONoise", intensity=[0.08, 0.08], color_shift=[0.0, 0.0])(grey, *_no_boxes(), rng)
    assert 17 < float(noisy.astype(np.float64).std()) < 24  # 0.08 * 255 = 20.4 levels
    rain, _, _ = _pipe("RandomRain", density=[0.01, 0.01])(grey, *_no_boxes(), rng)
    assert set(np.unique(rain)) == {100, 200}
    flare, _, _ = _pipe("RandomSunFlare", src_radius_range=[10, 10], src_intensity=[1.0, 1.0])(grey, *_no_boxes(), rng)
    assert set(np.unique(flare)) == {100, 255} and (flare == 255).mean() > 0.03
    # Only the channel permutation: a pure reordering of the channels.
    rgb = np.zeros((S, S, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10, 20, 30
    only_perm = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.0}
    seen = set()
    for seed in range(30):
        out, _, _ = _pipe("RandomPhotometricDistort", **only_perm)(rgb, *_no_boxes(), np.random.default_rng(seed))
        assert sorted(out[0, 0].tolist()) == [10, 20, 30]
        seen.add(tuple(out[0, 0].tolist()))
    assert len(seen) > 3


# --- YAML ----------------------------------------------------------------------------------------


def test_photometric_distort_defaults_to_half(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text("data_augment:\n  RandomPhotometricDistort: {}\n  RandomFog:\n    fog_coef: [0.3, 0.5]\n")
    specs = load_augment_specs(path)
    assert specs[0] == AugOpSpec("RandomPhotometricDistort", 0.5, {})
    assert specs[1].prob == 0.0  # the other new ops keep the original's default of 0
    path.write_text("data_augment:\n  RandomPhotometricDistort:\n    hue: [-0.1, 0.1]\n  RandomCrop:\n")
    specs = load_augment_specs(path)
    assert specs[0].prob == 0.5 and specs[1].prob == 0.0
    path.write_text("data_augment:\n  RandomPhotometricDistort:\n")  # empty entry: disabled, as originally
    assert load_augment_specs(path)[0].prob == 0.0
    pipe = AugmentPipeline([AugOpSpec("RandomPhotometricDistort", 0.5, {})])
    rng = np.random.default_rng(0)
    img = _noise_image(0)
    changed = sum(not np.array_equal(pipe(img, *_no_boxes(), rng)[0], img) for _ in range(300))
    assert 110 < changed < 190


def test_unknown_key_in_new_op_only_warns(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text("data_augment:\n  RandomRain:\n    prob: 0.2\n    density: [0.001, 0.002]\n    rain_type: heavy\n")
    with pytest.warns(UserWarning, match="RandomRain.*rain_type"):
        specs = load_augment_specs(path)
    assert specs == [AugOpSpec("RandomRain", 0.2, {"density": [0.001, 0.002]})]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert build_augment_pipeline(path).active_ops == ("RandomRain",)


@pytest.mark.parametrize(
    "spec",
    [
        AugOpSpec("RandomCrop", 1.0, {"ratio": 1.5}),
        AugOpSpec("RandomResizedCrop", 1.0, {"scale": [0.9, 0.5]}),
        AugOpSpec("RandomResizedCrop", 1.0, {"min_visibility": 2}),
        AugOpSpec("RandomPhotometricDistort", 1.0, {"hue": [-1, 1]}),
        AugOpSpec("ISONoise", 1.0, {"intensity": "high"}),
        AugOpSpec("RandomRain", 1.0, {"drop_length": [1.5, 3]}),
        AugOpSpec("RandomFog", 1.0, {"fog_coef": [0.5, 0.2]}),
        AugOpSpec("RandomSunFlare", 1.0, {"src_radius_range": [-1, 5]}),
    ],
)
def test_bad_values_fail_at_build(spec):
    with pytest.raises(ValueError, match=spec.name):
        AugmentPipeline([spec])


def test_yaml_with_every_op_at_prob_one_runs(tmp_path):
    names = [n for n in AUGMENT_OPS if n not in NEEDS_DATASET and n not in UNIMPLEMENTED_OPS]
    assert set(NEW_OPS) <= set(names) and "HorizontalFlip" in names
    text = "data_augment:\n" + "".join(f"  - {n}: {{prob: 1.0}}\n" for n in names)
    path = tmp_path / "all.yaml"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = build_augment_pipeline(path)
    assert pipe.active_ops == tuple(names)
    rng = np.random.default_rng(0)
    for i in range(20):
        n = i % 4
        boxes = np.column_stack([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))]).astype(np.float32)
        out, ob, ol = pipe(_noise_image(i), boxes, np.arange(n), rng)
        assert out.shape == (S, S, 3) and out.dtype == np.uint8
        assert ob.shape == (len(ol), 4) and (ob[:, 2:] > 0).all()
        assert (_xyxy(ob) >= -1e-6).all() and (_xyxy(ob) <= 1 + 1e-6).all()
