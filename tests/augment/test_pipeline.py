"""Tests for uhd_core.augment: YAML loading, op semantics, box/pixel consistency, seeding."""

from __future__ import annotations

import pickle
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml

from uhd_core.augment import (
    AUGMENT_OP_INFO,
    AUGMENT_OPS,
    UNIMPLEMENTED_OPS,
    AugmentPipeline,
    AugOpSpec,
    UnknownAugmentOpError,
    build_augment_pipeline,
    default_config_text,
    load_augment_specs,
    parse_augment_specs,
    register_augment_op,
    unimplemented,
)

# Ops that draw partner samples need source= (tested in test_multi_sample.py).
NEEDS_SOURCE = {"Mosaic", "MixUp", "CopyPaste"}
IMPLEMENTED = [name for name in AUGMENT_OPS if name not in UNIMPLEMENTED_OPS and name not in NEEDS_SOURCE]
S = 64  # training size used throughout


def _write(tmp_path: Path, text: str, name: str = "aug.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _pipe(name: str, prob: float = 1.0, **params) -> AugmentPipeline:
    return AugmentPipeline([AugOpSpec(name, prob, params)])


def _noise_image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (S, S, 3), dtype=np.uint8)


def _rect_image(x0: int, y0: int, x1: int, y1: int) -> tuple[np.ndarray, np.ndarray]:
    """Black image with a white rectangle over pixel columns [x0, x1) and rows [y0, y1), plus its
    (1, 4) cxcywh box."""
    img = np.zeros((S, S, 3), dtype=np.uint8)
    img[y0:y1, x0:x1] = 255
    box = np.array([[(x0 + x1) / 2 / S, (y0 + y1) / 2 / S, (x1 - x0) / S, (y1 - y0) / S]], dtype=np.float32)
    return img, box


def _cxcywh_to_xyxy_px(boxes: np.ndarray) -> np.ndarray:
    cx, cy, w, h = boxes.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1) * S


def _pixel_box(img: np.ndarray) -> np.ndarray | None:
    mask = img.max(axis=2) > 127  # bilinear edges are ~half-covered pixels: 127 splits them fairly
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


ALL_OPS_HALF = [AugOpSpec(name, 0.5, {}) for name in IMPLEMENTED]


# --- seeding ------------------------------------------------------------------------------------


def _run_many(pipe: AugmentPipeline, seed: int, n: int = 20):
    rng = np.random.default_rng(seed)
    boxes = np.array([[0.5, 0.5, 0.3, 0.6], [0.2, 0.3, 0.1, 0.2], [0.9, 0.9, 0.2, 0.2]], dtype=np.float32)
    labels = np.array([0, 1, 2], dtype=np.int64)
    return [pipe(_noise_image(i), boxes, labels, rng) for i in range(n)]


@pytest.mark.parametrize("specs", [None, ALL_OPS_HALF], ids=["default", "all-ops"])
def test_same_seed_same_output_and_no_global_state(specs):
    pipe = build_augment_pipeline(None) if specs is None else AugmentPipeline(specs)
    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(1)
    random.seed(1)
    first = _run_many(pipe, seed=123)
    np.random.seed(2)  # global seeds must not matter ...
    random.seed(2)
    second = _run_many(pipe, seed=123)
    for (i1, b1, l1), (i2, b2, l2) in zip(first, second):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(b1, b2)
        np.testing.assert_array_equal(l1, l2)
    np.random.set_state(np_state)
    random.setstate(py_state)
    # ... and are not consumed either.
    before = (np.random.get_state()[1].copy(), random.getstate())
    _run_many(pipe, seed=5)
    assert np.array_equal(np.random.get_state()[1], before[0]) and random.getstate() == before[1]
    # A different seed gives a different augmentation somewhere in 20 samples.
    other = _run_many(pipe, seed=124)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_pipeline_pickles_and_keeps_determinism():
    pipe = AugmentPipeline(ALL_OPS_HALF)
    _run_many(pipe, seed=0, n=3)  # after use, transforms hold state; must still pickle
    clone = pickle.loads(pickle.dumps(pipe))
    for (i1, b1, l1), (i2, b2, l2) in zip(_run_many(pipe, seed=9), _run_many(clone, seed=9)):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(b1, b2)
        np.testing.assert_array_equal(l1, l2)


# --- flips --------------------------------------------------------------------------------------


def test_horizontal_flip_moves_box_and_swaps_classes():
    img, box = _rect_image(4, 10, 20, 40)
    boxes = np.concatenate([box, [[0.7, 0.5, 0.2, 0.2]], [[0.3, 0.4, 0.1, 0.1]]]).astype(np.float32)
    labels = np.array([0, 1, 2], dtype=np.int64)
    pipe = _pipe("HorizontalFlip", class_swap_map={0: 1, 1: 0})
    out, ob, ol = pipe(img, boxes, labels, np.random.default_rng(0))
    np.testing.assert_allclose(ob[:, 0], 1.0 - boxes[:, 0], atol=1e-6)
    np.testing.assert_allclose(ob[:, 1:], boxes[:, 1:], atol=1e-6)
    assert ol.tolist() == [1, 0, 2]  # a swap, not 0 -> 1 -> 0; unmapped 2 stays
    np.testing.assert_array_equal(out, img[:, ::-1])
    np.testing.assert_allclose(_pixel_box(out), _cxcywh_to_xyxy_px(ob[:1])[0], atol=1e-4)


def test_vertical_flip_moves_box():
    img, box = _rect_image(4, 10, 20, 40)
    out, ob, ol = _pipe("VerticalFlip")(img, box, np.array([3]), np.random.default_rng(0))
    np.testing.assert_allclose(ob[0], [box[0, 0], 1.0 - box[0, 1], box[0, 2], box[0, 3]], atol=1e-6)
    np.testing.assert_array_equal(out, img[::-1])
    assert ol.tolist() == [3]


# --- geometric consistency ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        AugOpSpec("Translation", 1.0, {"translate": 0.3, "fill": 0}),
        AugOpSpec("Translation", 1.0, {"translate": [0.5, 0.1], "fill": [0, 0, 0]}),
        AugOpSpec("RandomScale", 1.0, {"scale_range": [0.5, 1.6], "fill": 0}),
        AugOpSpec("RandomScale", 1.0, {"scale_range": [0.6, 1.5], "keep_aspect_ratio": False, "fill": 0}),
    ],
    ids=["translate", "translate-xy", "scale", "scale-free-aspect"],
)
def test_geometric_ops_keep_boxes_on_the_drawn_rectangle(spec):
    pipe = AugmentPipeline([spec])
    rng = np.random.default_rng(42)
    seen_kept = seen_dropped = 0
    for i in range(60):
        x0, y0 = int(rng.integers(0, 50)), int(rng.integers(0, 50))
        x1, y1 = x0 + int(rng.integers(3, S - x0 + 1)), y0 + int(rng.integers(3, S - y0 + 1))
        img, box = _rect_image(x0, y0, min(x1, S), min(y1, S))
        out, ob, ol = pipe(img, box, np.array([7]), rng)
        assert out.shape == img.shape and out.dtype == np.uint8
        pix = _pixel_box(out)
        if len(ob):
            seen_kept += 1
            assert ol.tolist() == [7]
            assert pix is not None, f"sample {i}: box {ob} kept but rectangle gone"
            np.testing.assert_allclose(_cxcywh_to_xyxy_px(ob)[0], pix, atol=1.5, err_msg=f"sample {i}")
            assert (ob[:, :2] - ob[:, 2:] / 2 >= -1e-6).all() and (ob[:, :2] + ob[:, 2:] / 2 <= 1 + 1e-6).all()
        else:
            seen_dropped += 1
            assert ol.shape == (0,)
            # nothing (or a sliver thinner than a pixel) of the rectangle is left
            assert pix is None or min(pix[2] - pix[0], pix[3] - pix[1]) <= 1
    assert seen_kept > 30


def test_boxes_pushed_out_are_dropped_with_their_labels():
    # Zooming in 3x about the centre keeps only the central box; corner boxes leave the image.
    boxes = np.array(
        [[0.08, 0.08, 0.1, 0.1], [0.5, 0.5, 0.1, 0.1], [0.92, 0.5, 0.1, 0.1], [0.5, 0.9, 0.1, 0.1]], dtype=np.float32
    )
    labels = np.array([10, 11, 12, 13], dtype=np.int64)
    img = _noise_image()
    _, ob, ol = _pipe("RandomScale", scale_range=[3.0, 3.0])(img, boxes, labels, np.random.default_rng(0))
    assert ol.tolist() == [11]
    np.testing.assert_allclose(ob, [[0.5, 0.5, 0.3, 0.3]], atol=1e-2)
    # A shift by a whole image width pushes everything out.
    _, ob, ol = _pipe("Translation", translate=[1.0, 0.0])(img, boxes, labels, np.random.default_rng(3))
    assert ob.shape[0] == ol.shape[0]
    assert len(ol) < 4
    # Degenerate input boxes (< 1 px) are dropped too, keeping the rest aligned.
    tiny = np.array([[0.5, 0.5, 0.5 / S, 0.2], [0.3, 0.3, 0.2, 0.2]], dtype=np.float32)
    _, ob, ol = AugmentPipeline([])(img, tiny, np.array([1, 2]), np.random.default_rng(0))
    assert ol.tolist() == [2] and ob.shape == (1, 4)


def test_translation_fill_colour():
    img = np.full((S, S, 3), 255, dtype=np.uint8)
    out, _, _ = _pipe("Translation", translate=[1.0, 1.0], fill=[1, 2, 3])(
        img, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.random.default_rng(1)
    )
    border = out[(out != 255).any(axis=2)]
    assert len(border) and (border == [1, 2, 3]).all()


# --- shapes, empties, inputs --------------------------------------------------------------------


@pytest.mark.parametrize("name", IMPLEMENTED)
def test_each_op_keeps_format_and_handles_no_boxes(name):
    pipe = _pipe(name)
    img = _noise_image()
    for n in (0, 2):
        boxes = np.tile(np.array([[0.5, 0.5, 0.4, 0.5]], np.float32), (n, 1))
        labels = np.arange(n, dtype=np.int64)
        img_before, boxes_before = img.copy(), boxes.copy()
        out, ob, ol = pipe(img, boxes, labels, np.random.default_rng(n))
        assert out.shape == (S, S, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
        assert out is not img
        assert ob.dtype == np.float32 and ob.shape[1] == 4 and ol.dtype == np.int64 and len(ob) == len(ol)
        np.testing.assert_array_equal(img, img_before)  # inputs untouched
        np.testing.assert_array_equal(boxes, boxes_before)
        if n:
            assert len(ob) == n  # a centred half-size box survives every op


def test_empty_pipeline_and_zero_boxes():
    out, ob, ol = build_augment_pipeline(None)(
        _noise_image(), np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), np.random.default_rng(0)
    )
    assert ob.shape == (0, 4) and ob.dtype == np.float32 and ol.shape == (0,) and ol.dtype == np.int64


def test_pixel_op_parameters_take_effect():
    img = np.full((S, S, 3), 200, dtype=np.uint8)
    none = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    out, _, _ = _pipe("RandomBrightness", factor_range=[2.0, 2.0])(img, *none, np.random.default_rng(0))
    assert (out == 255).all()
    color = np.zeros((S, S, 3), np.uint8)
    color[..., 0] = 255
    out, _, _ = _pipe("ToGray")(color, *none, np.random.default_rng(0))
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    out, _, _ = _pipe("RandomSaturation", factor_range=[0.0, 0.0])(color, *none, np.random.default_rng(0))
    assert int(out.max(axis=2).astype(int).max() - out.min(axis=2).astype(int).min()) <= 1
    noisy, _, _ = _pipe("GaussNoise", var_limit=[400, 400])(img, *none, np.random.default_rng(0))
    assert 15 < float(noisy.astype(np.float64).std()) < 25  # std = sqrt(400) = 20 pixel levels


# --- YAML loading -------------------------------------------------------------------------------


def test_unknown_op_lists_known_ops(tmp_path):
    path = _write(tmp_path, "data_augment:\n  HorizontalFlip: 0.5\n  Sharpen: 0.2\n")
    with pytest.raises(UnknownAugmentOpError) as info:
        load_augment_specs(path)
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "Sharpen" in msg and "HorizontalFlip" in msg and "RandomScale" in msg and "Mosaic" in msg
    assert "\n" not in msg
    with pytest.raises(UnknownAugmentOpError):
        AugmentPipeline([AugOpSpec("Sharpen", 1.0, {})])


def test_unknown_key_warns_once_naming_it(tmp_path):
    text = "data_augment:\n  Blur:\n    prob: 0.2\n    blur_limt: [3, 5]\n    sigma: 2\n  ToGray: 0.1\n"
    path = _write(tmp_path, text)
    with pytest.warns(UserWarning) as record:
        specs = load_augment_specs(path)
    ours = [w for w in record if "blur_limt" in str(w.message)]
    assert len(ours) == 1 and len(record) == 1
    msg = str(ours[0].message)
    assert "Blur" in msg and "sigma" in msg
    assert ours[0].filename == __file__  # points at the caller, not at the loader's internals
    assert specs[0] == AugOpSpec("Blur", 0.2, {})
    assert specs[1] == AugOpSpec("ToGray", 0.1, {})


def test_bare_numbers_probabilities_and_remove_outliers(tmp_path):
    text = (
        "data_augment:\n"
        "  ToGray: 0.01\n"
        "  Blur:\n    blur_limit: [3, 5]\n"  # no prob -> disabled
        "  VerticalFlip:\n"  # empty -> disabled
        "  RemoveOutliers: 1e-8\n"  # YAML reads 1e-8 (no dot) as a string; still a number here
    )
    specs = load_augment_specs(_write(tmp_path, text))
    assert specs == [
        AugOpSpec("ToGray", 0.01, {}),
        AugOpSpec("Blur", 0.0, {"blur_limit": [3, 5]}),
        AugOpSpec("VerticalFlip", 0.0, {}),
        AugOpSpec("RemoveOutliers", 1.0, {"min_area": "1e-8"}),
    ]
    pipe = AugmentPipeline(specs)
    assert pipe.active_ops == ("ToGray", "RemoveOutliers")
    # RemoveOutliers always applies and uses the bare number as the minimum area.
    boxes = np.array([[0.5, 0.5, 0.05, 0.05], [0.5, 0.5, 0.5, 0.5]], dtype=np.float32)  # areas 0.0025, 0.25
    remove = _pipe("RemoveOutliers", min_area=0.01)
    _, ob, ol = remove(_noise_image(), boxes, np.array([4, 5]), np.random.default_rng(0))
    assert ol.tolist() == [5] and ob.shape == (1, 4)
    assert load_augment_specs(_write(tmp_path, "data_augment:\n  RemoveOutliers:\n    min_area: 0.01\n", "b.yaml")) == [
        AugOpSpec("RemoveOutliers", 1.0, {"min_area": 0.01})
    ]


def test_list_form_keeps_order_and_allows_repeats(tmp_path):
    text = "data_augment:\n  - Blur: {prob: 0.1}\n  - {name: HorizontalFlip, prob: 0.5}\n  - Blur: 0.2\n"
    specs = load_augment_specs(_write(tmp_path, text))
    assert [(s.name, s.prob) for s in specs] == [("Blur", 0.1), ("HorizontalFlip", 0.5), ("Blur", 0.2)]


def test_original_default_path_means_builtin_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # even where no uhd/aug.yaml exists
    builtin = load_augment_specs("uhd/aug.yaml")
    assert builtin == load_augment_specs(None) == load_augment_specs(Path("uhd/aug.yaml"))
    assert builtin == parse_augment_specs(yaml.safe_load(default_config_text()))
    # the original tool's uhd/aug.yaml, op for op
    assert [(s.name, s.prob) for s in builtin] == [
        ("RandomPhotometricDistort", 0.5), ("RandomHSV", 0.75), ("HorizontalFlip", 0.5), ("CLAHE", 0.01),
        ("ToGray", 0.01), ("RemoveOutliers", 1.0)]
    assert builtin[1].params == {"hue_gain": 0.015, "saturation_gain": 0.7, "value_gain": 0.4}
    assert builtin[-1].params == {"min_area": 1e-8}
    assert not {s.name for s in builtin} & set(UNIMPLEMENTED_OPS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped configs are clean
        assert AugmentPipeline(load_augment_specs(None)).active_ops
        tiny = load_augment_specs("uhd/aug_tiny.yaml")
        assert tiny != builtin and AugmentPipeline(tiny).active_ops


def test_unimplemented_ops_load_with_prob_zero_and_raise_otherwise(tmp_path):
    # No op is a placeholder now; the mechanism is tested with a throwaway one.
    assert not set(UNIMPLEMENTED_OPS) & NEEDS_SOURCE
    name = "TestOnlyPlaceholder"
    try:
        register_augment_op(name)(unimplemented._not_implemented(name))
        text = f"data_augment:\n  {name}:\n    prob: 0.0\n    anything: 1\n  HorizontalFlip: 0.5\n"
        path = _write(tmp_path, text)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # any key is accepted
            pipe = build_augment_pipeline(path)
        assert pipe.active_ops == ("HorizontalFlip",)
        with pytest.raises(NotImplementedError, match=f"augment op '{name}' is not implemented yet"):
            _pipe(name, prob=0.3)
    finally:
        AUGMENT_OPS.pop(name, None)
        AUGMENT_OP_INFO.pop(name, None)


def test_original_tool_config_shape_loads(tmp_path):
    # The original uhd/aug.yaml layout: scalar translate, fill triples, 1e-8 string, {} swap map.
    text = (
        "data_augment:\n  RandomPhotometricDistort:\n    prob: 0.0\n"
        "  Blur:\n    prob: 0.01\n    blur_limit: [3, 7]\n"
        "  HorizontalFlip:\n    prob: 0.5\n    class_swap_map: {}\n"
        "  RandomScale:\n    prob: 0.5\n    scale_range: [1.0, 1.4]\n    keep_aspect_ratio: true\n"
        "  Translation:\n    prob: 0.5\n    translate: 0.1\n    fill: [114, 114, 114]\n"
        "  CLAHE:\n    prob: 0.01\n    clip_limit: 4.0\n    tile_grid_size: [8, 8]\n"
        "  ToGray: 0.01\n  RemoveOutliers: 1e-8\n"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe = build_augment_pipeline(_write(tmp_path, text))
    expected = ("Blur", "HorizontalFlip", "RandomScale", "Translation", "CLAHE", "ToGray", "RemoveOutliers")
    assert pipe.active_ops == expected


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_augment_specs(missing)


@pytest.mark.parametrize(
    "text",
    [
        "- HorizontalFlip\n",
        "augment:\n  HorizontalFlip: 0.5\n",
        "",
        "data_augment: 3\n",
        "data_augment:\n  HorizontalFlip: [0.5]\n",
        "data_augment:\n  HorizontalFlip: 1.5\n",
        "data_augment:\n  HorizontalFlip: {prob: often}\n",
        "data_augment:\n  - [HorizontalFlip, 0.5]\n",
        "data_augment: {HorizontalFlip: 0.5\n",
    ],
)
def test_malformed_yaml_is_a_one_line_value_error(tmp_path, text):
    with pytest.raises(ValueError) as info:
        load_augment_specs(_write(tmp_path, text))
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        AugOpSpec("RandomScale", 0.5, {"scale_range": [1.4, 1.0]}),
        AugOpSpec("Translation", 0.5, {"translate": "far"}),
        AugOpSpec("Blur", 0.5, {"blur_limit": [1, 5]}),
        AugOpSpec("GaussNoise", 0.5, {"var_limit": [-1, 5]}),
        AugOpSpec("ImageCompression", 0.5, {"quality_range": [0, 200]}),
        AugOpSpec("HorizontalFlip", 0.5, {"class_swap_map": [0, 1]}),
        AugOpSpec("RandomScale", 0.5, {"keep_aspect_ratio": "yes"}),
    ],
)
def test_bad_parameter_values_fail_at_build(spec):
    with pytest.raises(ValueError, match=spec.name):
        AugmentPipeline([spec])


# --- registry -----------------------------------------------------------------------------------


def test_register_custom_op_and_duplicates():
    name = "TestOnlyInvert"
    try:

        @register_augment_op(name)
        def build_invert(*, strength: float = 1.0):
            def op(image, boxes, labels, rng):
                return 255 - image, boxes, labels

            return op

        assert AUGMENT_OP_INFO[name].keys == frozenset({"strength"})
        out, _, _ = _pipe(name)(np.zeros((S, S, 3), np.uint8), np.zeros((0, 4)), np.zeros(0), np.random.default_rng(0))
        assert (out == 255).all()
        with pytest.raises(ValueError, match="registered twice"):
            register_augment_op(name)(build_invert)
    finally:
        AUGMENT_OPS.pop(name, None)
        AUGMENT_OP_INFO.pop(name, None)


def test_build_errors_name_the_file(tmp_path):
    path = _write(tmp_path, "data_augment:\n  RandomScale:\n    prob: 0.5\n    scale_range: [2, 1]\n")
    with pytest.raises(ValueError, match=r"aug\.yaml: RandomScale\.scale_range"):
        build_augment_pipeline(path)


def test_yaml_order_decides_the_result(tmp_path):
    """Translation then VerticalFlip differs from VerticalFlip then Translation, and each equals the
    composition of the two ops in the order written."""
    image = _noise_image()
    boxes = np.array([[0.5, 0.3, 0.2, 0.2]], dtype=np.float32)
    labels = np.array([0], dtype=np.int64)

    def run(first: str, second: str):
        params = {"Translation": "{prob: 1.0, translate: 0.2}", "VerticalFlip": "{prob: 1.0}"}
        text = f"data_augment:\n  - {first}: {params[first]}\n  - {second}: {params[second]}\n"
        pipe = AugmentPipeline(load_augment_specs(_write(tmp_path, text, f"{first}_{second}.yaml")))
        return pipe(image, boxes, labels, np.random.default_rng(7))

    flip_last = run("Translation", "VerticalFlip")
    flip_first = run("VerticalFlip", "Translation")
    assert not np.allclose(flip_last[1], flip_first[1])
    # the translation is the same draw in both orders (flips take no randomness): t = shift in y
    shift_y = 1.0 - flip_last[1][0, 1] - 0.3  # flip(y + t) = 1 - (0.3 + t)
    assert flip_first[1][0, 1] == pytest.approx(1.0 - 0.3 + shift_y, abs=1e-5)  # flip(y) + t
