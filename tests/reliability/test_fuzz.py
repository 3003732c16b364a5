"""Property tests over arbitrary input: parsers and loaders either return valid values or raise the
one error type the CLI turns into a one-line message; nothing else escapes.

Every property pairs a safety half (garbage in -> no crash, only valid output) with a completeness
half (well-formed input -> exactly the value it spells), so a parser that rejected everything would
fail too. Examples are derandomized (same inputs every run) and capped per test; regressions the
fuzzers found are pinned with @example.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from uhd_core.anchors import parse_anchor_string
from uhd_core.augment import AUGMENT_OPS, UNIMPLEMENTED_OPS, AugmentPipeline, AugOpSpec, build_augment_pipeline
from uhd_core.config import RunConfig, build_config
from uhd_core.data.check import check_dataset, parse_line
from uhd_core.data.dataset import decode_all, scan_yolo_folder
from uhd_core.data.labels import parse_label_text, read_label_file
from uhd_core.limits import MAX_CLASS_ID
from uhd_core.errors import ConfigError


def _settings(n: int) -> settings:
    # derandomize: the same examples on every run and machine, so a failure is reproducible and CI is stable.
    return settings(max_examples=n, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _aug_helpers():
    """tests/augment/aug_helpers.py (its box strategy), importable whichever test dirs pytest collected."""
    if "aug_helpers" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "augment" / "aug_helpers.py"
        spec = importlib.util.spec_from_file_location("aug_helpers", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["aug_helpers"] = module
    return sys.modules["aug_helpers"]


# Tokens that sit on the edges of float() and of the range checks.
TRICKY_NUMBERS = ["0", "1", "-0", "0.5", "1.0", "1.0000001", "-1e-7", "1e-46", "1e30", "-1", "nan", "inf", "-inf",
                  "1_0", "0x10", "٣", "1e", ".", "", "2147483647", "2147483648", "1e-300"]
number_token = st.one_of(st.sampled_from(TRICKY_NUMBERS), st.floats(allow_nan=True).map(repr),
                         st.integers(-5, 10**12).map(str))


@st.composite
def near_valid_line(draw) -> str:
    """A good line with one field swapped for a tricky token: random tokens rarely line up five good fields."""
    fields = [str(draw(st.integers(0, 9))), *(repr(draw(st.floats(0.05, 0.95))) for _ in range(4))]
    fields[draw(st.integers(0, 4))] = draw(number_token)
    return " ".join(fields)


label_line = st.one_of(
    st.lists(number_token, min_size=0, max_size=7).map(" ".join),  # wrong field counts included
    near_valid_line(),
    st.text(max_size=40),
)


def _assert_valid_boxes(boxes: np.ndarray, classes: np.ndarray) -> None:
    """Training's contract: (N, 4) float32 cxcywh inside the image with positive size, int64 classes in range."""
    assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
    assert classes.dtype == np.int64 and classes.shape == (len(boxes),)
    assert np.isfinite(boxes).all()
    assert (boxes[:, 2] > 0).all() and (boxes[:, 3] > 0).all()
    corners = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], axis=1)
    assert (corners >= -1e-6).all() and (corners <= 1 + 1e-6).all()
    assert ((classes >= 0) & (classes <= MAX_CLASS_ID)).all()


# ------------------------------------------------------------------------------------------------
# YOLO label lines: the training parser and dataset-check's


@_settings(300)
@given(lines=st.lists(label_line, max_size=8), newline=st.sampled_from(["\n", "\r\n", "\r"]))
@example(lines=["1e30 0.5 0.5 0.1 0.1"], newline="\n")  # class id past int64: was an OverflowError
@example(lines=["0 1e-46 1e-46 1e-46 1e-46"], newline="\n")  # width > 0 in float64, 0 in float32
def test_label_parser_never_raises_and_yields_only_valid_boxes(lines, newline):
    text = newline.join(lines)
    parsed = parse_label_text(text, "fuzz.txt")
    _assert_valid_boxes(parsed.boxes, parsed.classes)
    # Nothing silently vanishes: every line is a box or a reported issue (with its line number).
    n_lines = len(text.splitlines())
    assert len(parsed.boxes) + len(parsed.issues) == n_lines
    assert all(1 <= issue.line <= n_lines and issue.reason for issue in parsed.issues)


valid_coord = st.floats(0.0, 1.0)
valid_size = st.floats(1e-3, 1.0)


@st.composite
def valid_label_lines(draw) -> tuple[str, tuple[int, float, float, float, float]]:
    """A well-formed line whose box lies inside the image, in one of the spellings other tools write."""
    cls = draw(st.integers(0, MAX_CLASS_ID))
    w, h = draw(valid_size), draw(valid_size)
    cx = draw(st.floats(w / 2, 1 - w / 2)) if w < 1 else 0.5
    cy = draw(st.floats(h / 2, 1 - h / 2)) if h < 1 else 0.5
    cls_text = draw(st.sampled_from([str(cls), f"{cls}.0", f"{float(cls):.15e}"]))  # exact below 2**53
    fmt = draw(st.sampled_from(["{!r}", "{:.17g}", "{:.17e}"]))
    sep = draw(st.sampled_from([" ", "\t", "  ", " \t "]))
    text = sep.join([cls_text, *(fmt.format(v) for v in (cx, cy, w, h))])
    pad = draw(st.sampled_from(["", " ", "\t"]))
    return pad + text + pad, (cls, cx, cy, w, h)


@_settings(200)
@given(items=st.lists(valid_label_lines(), min_size=1, max_size=6))
def test_well_formed_lines_parse_to_exactly_their_boxes(items):
    parsed = parse_label_text("\n".join(line for line, _ in items))
    assert parsed.issues == []
    assert parsed.classes.tolist() == [cls for _, (cls, *_) in items]
    # Boxes inside the image are kept as written (up to clipping of float rounding at the border).
    np.testing.assert_allclose(parsed.boxes, [box for _, (_, *box) in items], rtol=0, atol=2e-6)


@_settings(300)
@given(line=label_line)
@example(line="1e30 0.5 0.5 0.1 0.1")
def test_dataset_check_line_parser_agrees_with_training(line):
    line = line.splitlines()[0] if line.splitlines() else line  # dataset-check is handed one line at a time
    result = parse_line(line)
    if result is not None:
        cls, *coords = result
        assert isinstance(cls, int) and 0 <= cls <= MAX_CLASS_ID
        assert len(coords) == 4 and all(np.isfinite(coords))
    # Training is the stricter parser (it also range-checks): whatever it keeps, dataset-check reads the same.
    trained = parse_label_text(line)
    if len(trained.boxes):
        assert result is not None and result[0] == int(trained.classes[0])
    if result is None:
        assert len(trained.boxes) == 0 and len(trained.issues) == (1 if line.strip() else len(line.splitlines()))


@_settings(100)
@given(items=st.lists(valid_label_lines(), min_size=1, max_size=1))
def test_dataset_check_reads_well_formed_lines_exactly(items):
    (line, expected), = items
    cls, *coords = parse_line(line)
    assert cls == expected[0]
    assert coords == pytest.approx(expected[1:], abs=1e-12)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """One folder per module: hypothesis examples must not request function-scoped tmp_path."""
    return tmp_path_factory.mktemp("fuzz")


_counter = itertools.count()


def _one_image_folder(scratch: Path, label: bytes) -> Path:
    import cv2

    folder = scratch / f"labels_{next(_counter)}"
    folder.mkdir()
    cv2.imwrite(str(folder / "a.png"), np.full((8, 8, 3), 128, np.uint8))
    (folder / "a.txt").write_bytes(label)
    return folder


label_bytes = st.one_of(
    st.binary(max_size=200),
    st.lists(label_line, max_size=6).map(lambda ls: "\n".join(ls).encode("utf-8", "surrogatepass")),
    st.lists(label_line, max_size=6).map(lambda ls: b"\xef\xbb\xbf" + "\n".join(ls).encode("utf-8", "surrogatepass")),
)


@_settings(60)
@given(data=label_bytes)
@example(data=b"\xff\xfe0 0.5 0.5 0.1 0.1")  # UTF-16 byte-order mark: not UTF-8
def test_label_files_of_any_bytes_are_parsed_or_reported(scratch, data):
    folder = _one_image_folder(scratch, data)
    parsed = read_label_file(folder / "a.txt")
    _assert_valid_boxes(parsed.boxes, parsed.classes)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:  # the whole file is one issue (line 0), no boxes
        assert len(parsed.boxes) == 0 and [i.line for i in parsed.issues] == [0]
        text = None
    if text is not None:
        assert len(parsed.boxes) + len(parsed.issues) == len(text.splitlines())

    # dataset-check on the same file: never raises; every non-empty line is a box or a finding.
    report = check_dataset(folder)
    kinds = report.counts()
    if text is None:
        assert kinds["unreadable label file"] == 1 and report.boxes == 0
    elif not text.strip():
        assert kinds["empty label file"] == 1
    else:
        non_empty = sum(1 for raw in text.splitlines() if raw.strip())
        assert report.boxes + kinds["malformed line"] + kinds["w or h <= 0"] == non_empty


# ------------------------------------------------------------------------------------------------
# --img-size, --classes, --anchors


flag_text = st.one_of(
    st.text(max_size=24),
    st.from_regex(r"\s*-?[0-9٣²]{0,5}\s*[xX×,]?\s*-?[0-9]{0,5}\s*", fullmatch=True),
    st.lists(number_token, max_size=4).map(",".join),
    st.lists(st.lists(number_token, max_size=3).map(",".join), max_size=4).map(" ".join),
)


def _parse_flag(field: str, text: str):
    """The flag's parsed value, or None after checking the error is the one-line ConfigError naming the flag."""
    try:
        return getattr(build_config(None, {field: text}), field)
    except ConfigError as exc:
        message = str(exc)
        assert "\n" not in message and f"--{field.replace('_', '-')}" in message, message
        return None


@_settings(200)
@given(text=flag_text)
@example(text="²x²")  # isdigit() but not int(): must stay a ConfigError
@example(text="１２８x１２８")  # full-width digits: int() reads them
def test_img_size_parser(text):
    value = _parse_flag("img_size", text)
    if value is not None:
        assert len(value) == 2 and all(isinstance(v, int) and 16 <= v <= 4096 for v in value)


@_settings(100)
@given(h=st.integers(16, 4096), w=st.integers(16, 4096), x=st.sampled_from(["x", "X", " x ", "x "]))
def test_img_size_parser_reads_every_valid_size(h, w, x):
    assert _parse_flag("img_size", f"{h}{x}{w}") == (h, w)


@_settings(200)
@given(text=flag_text)
@example(text="99999999999")  # past MAX_CLASS_ID: no label line could carry it
def test_classes_parser(text):
    value = _parse_flag("classes", text)
    if value is not None:
        assert value and len(set(value)) == len(value)
        assert all(isinstance(c, int) and 0 <= c <= MAX_CLASS_ID for c in value)


@_settings(100)
@given(ids=st.lists(st.integers(0, MAX_CLASS_ID), min_size=1, max_size=6, unique=True),
       sep=st.sampled_from([",", ", ", " , "]))
def test_classes_parser_reads_every_valid_list(ids, sep):
    assert _parse_flag("classes", sep.join(map(str, ids))) == tuple(ids)


@_settings(200)
@given(text=flag_text)
@example(text="1,2,3")
@example(text="nan,nan")  # a NaN anchor trains to NaN
@example(text="2,3")  # anchors are normalized
def test_anchors_parsers(text):
    value = _parse_flag("anchors", text)
    if value is not None:
        assert all(len(pair) == 2 and all(0.0 < side <= 1.0 for side in pair) for pair in value)
    # `uhd anchors --anchors` parses the same way and also refuses the empty set.
    try:
        arr = parse_anchor_string(text)
    except ConfigError as exc:
        assert "\n" not in str(exc)
        assert value is None or value == ()
    else:
        assert value is not None and arr.tolist() == [list(p) for p in value]


@_settings(100)
@given(pairs=st.lists(st.tuples(st.floats(1e-6, 1.0), st.floats(1e-6, 1.0)), min_size=1, max_size=5))
def test_anchors_parser_reads_every_valid_string(pairs):
    text = " ".join(f"{w!r},{h!r}" for w, h in pairs)
    assert _parse_flag("anchors", text) == tuple(pairs)
    assert parse_anchor_string(text).tolist() == [list(p) for p in pairs]


# ------------------------------------------------------------------------------------------------
# presets: build_config(PATH)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
field_names = st.sampled_from(sorted(RunConfig.model_fields))


def _load_preset(scratch: Path, text: str | bytes):
    path = scratch / f"preset_{next(_counter)}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    try:
        return build_config(str(path))
    except ConfigError as exc:
        assert "\n" not in str(exc), str(exc)
        return None


@_settings(150)
@given(values=st.dictionaries(st.one_of(field_names, st.text(max_size=8)), json_values, max_size=6))
def test_preset_of_random_values_is_a_config_or_a_config_error(scratch, values):
    cfg = _load_preset(scratch, yaml.safe_dump(values, allow_unicode=True))
    if cfg is not None:
        assert isinstance(cfg, RunConfig)
        RunConfig.model_validate(cfg.model_dump())  # whatever loaded is itself a valid config


@_settings(150)
@given(text=st.one_of(st.text(max_size=80), st.binary(max_size=80)))
@example(text="[" * 1000)  # nested too deeply for PyYAML: was a RecursionError
@example(text=b"\xa8 not utf-8")  # was a UnicodeDecodeError
@example(text="- a\n- b\n")
@example(text="1: 2\n")  # a non-string key
def test_preset_of_garbage_text_is_a_config_error(scratch, text):
    cfg = _load_preset(scratch, text)
    if cfg is not None:  # only a real preset may load: empty, comments only, or known keys
        data = yaml.safe_load(text)
        assert data is None or (isinstance(data, dict) and set(data) <= set(RunConfig.model_fields))


# Valid values that differ from the defaults, so a loader that ignored the file would fail.
VALID_PRESET_VALUES = {
    "epochs": st.integers(2, 1000),
    "lr": st.floats(1e-6, 0.9),
    "batch_size": st.integers(1, 512),
    "img_size": st.sampled_from([("32x48", (32, 48)), ([96, 128], (96, 128)), (80, (80, 80))]),
    "classes": st.lists(st.integers(0, 99), min_size=1, max_size=4, unique=True).map(lambda c: (c, tuple(c))),
    "cnn_width": st.integers(4, 128),
    "use_ema": st.booleans(),
    "arch": st.sampled_from(["cnn", "transformer"]),
    "seed": st.integers(-2**31, 2**31),
    "exp_name": st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=12),
    "output_stride": st.sampled_from([4, 8, 16]),
    "anchors": st.sampled_from([("0.1,0.2 0.3,0.4", ((0.1, 0.2), (0.3, 0.4))), ([[0.5, 0.5]], ((0.5, 0.5),))]),
}


@st.composite
def valid_presets(draw) -> tuple[dict, dict]:
    names = draw(st.lists(st.sampled_from(sorted(VALID_PRESET_VALUES)), min_size=1, max_size=6, unique=True))
    written, expected = {}, {}
    for name in names:
        value = draw(VALID_PRESET_VALUES[name])
        written[name], expected[name] = value if isinstance(value, tuple) else (value, value)
    return written, expected


@_settings(100)
@given(preset=valid_presets())
def test_valid_presets_load_exactly(scratch, preset):
    written, expected = preset
    cfg = _load_preset(scratch, yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                                for k, v in written.items()}, allow_unicode=True))
    assert cfg is not None
    assert {name: getattr(cfg, name) for name in expected} == expected


# ------------------------------------------------------------------------------------------------
# the augment pipeline as configured
#
# tests/augment fuzzes each new op on its own (test_crops_noise_weather.py, test_multi_sample.py);
# missing there: the whole configured pipelines (the built-ins, every op at once) and boxes that
# touch the edges, have zero area, lie outside the image, or are absent.

IMPLEMENTED = [n for n in AUGMENT_OPS if n not in UNIMPLEMENTED_OPS and n not in ("Mosaic", "MixUp", "CopyPaste")]
PIPELINES = {
    "default": lambda: build_augment_pipeline(None),
    "tiny": lambda: build_augment_pipeline("uhd/aug_tiny.yaml"),
    "all-ops-half": lambda: AugmentPipeline([AugOpSpec(name, 0.5, {}) for name in IMPLEMENTED]),
}
EDGE_VALUES = [0.0, 1.0, 0.5, 1 / 64, 1 - 1 / 64, 0.5 / 64, -0.25, 1.25]


def _boxes(data) -> np.ndarray:
    """Random cxcywh boxes (tests/augment's draw_boxes: degenerate and out-of-image allowed) plus boxes
    built from edge coordinates (touching 0 or 1, zero area, one pixel, fully outside); 0 boxes possible."""
    n = data.draw(st.integers(0, 4), label="n_random")
    _, random_boxes = _aug_helpers().draw_boxes(data, n)
    m = data.draw(st.integers(0, 4), label="n_edge")
    corners = np.array(data.draw(st.lists(st.sampled_from(EDGE_VALUES), min_size=4 * m, max_size=4 * m),
                                 label="edge corners"), dtype=np.float32).reshape(m, 4)
    xyxy = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], 1)
    edge_boxes = _aug_helpers().to_cxcywh(xyxy).reshape(-1, 4)
    return np.concatenate([random_boxes.reshape(-1, 4), edge_boxes]).astype(np.float32)


@pytest.mark.parametrize("name", list(PIPELINES))
@_settings(40)
@given(data=st.data())
def test_pipeline_turns_any_boxes_into_valid_boxes(name, data):
    size = 64
    boxes = _boxes(data)
    labels = np.arange(100, 100 + len(boxes), dtype=np.int64)  # unique, increasing: alignment is checkable
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    image = _aug_helpers().noise_image(seed % 997, (size, size))

    out, ob, ol = PIPELINES[name]()(image, boxes, labels, np.random.default_rng(seed))

    assert out.shape == image.shape and out.dtype == np.uint8
    _assert_valid_boxes(ob, ol - 100)
    assert (ob[:, 2:] * size >= 1.0 - 1e-3).all()  # at least one pixel wide and high
    assert set(ol.tolist()) <= set(labels.tolist()) and (np.diff(ol) > 0).all()  # a subsequence, in order
    if name == "default":  # flips, colour, RemoveOutliers 1e-8: every box with a pixel inside survives
        corners = np.clip(np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1), 0, 1)
        side_px = np.minimum(corners[:, 2] - corners[:, 0], corners[:, 3] - corners[:, 1]) * size
        assert int((side_px >= 1.0 + 1e-3).sum()) <= len(ob) <= int((side_px >= 1.0 - 1e-3).sum())


# ------------------------------------------------------------------------------------------------
# undecodable image files in a dataset


def _valid_folder(folder: Path, n: int = 3) -> list[str]:
    import cv2

    folder.mkdir(parents=True)
    names = []
    for i in range(n):
        cv2.imwrite(str(folder / f"ok{i}.jpg"), _aug_helpers().noise_image(i, (24, 32)))
        (folder / f"ok{i}.txt").write_text("0 0.5 0.5 0.4 0.6\n")
        names.append(f"ok{i}.jpg")
    return names


JPEG_MAGIC, PNG_MAGIC = b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n"
garbage_image = st.one_of(st.binary(max_size=600), st.binary(max_size=600).map(lambda b: JPEG_MAGIC + b),
                          st.binary(max_size=600).map(lambda b: PNG_MAGIC + b))


@_settings(12)
@given(garbage=st.lists(garbage_image, min_size=1, max_size=3))
@example(garbage=[b""])
def test_undecodable_images_are_skipped_and_reported(scratch, garbage):
    folder = scratch / f"images_{next(_counter)}"
    good = _valid_folder(folder)
    bad = []
    for i, data in enumerate(garbage):
        (folder / f"bad{i}.jpg").write_bytes(data)
        (folder / f"bad{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
        bad.append(f"bad{i}.jpg")

    index = scan_yolo_folder(folder, (0,))
    assert sorted(index.files) == sorted(good + bad)  # labels alone decide the index; decoding comes next
    decoded = decode_all(folder, index.files, (16, 16), "area", cache_dir=None)
    status = dict(zip(index.files, decoded.ok.tolist()))
    reasons = dict(zip(index.files, decoded.errors))
    assert all(status[name] for name in good)
    assert all(not status[name] and reasons[name] for name in bad)
    assert decoded.images.shape == (len(index.files), 16, 16, 3)

    report = check_dataset(folder)
    unreadable = {Path(f.where).name for f in report.findings if f.kind == "unreadable image"}
    assert unreadable == set(bad)
    assert report.images == len(good) + len(bad)


@pytest.mark.parametrize("seed", [0, 1])
def test_dataset_check_cli_reports_undecodable_images(scratch, seed):
    from typer.testing import CliRunner

    from uhd_cli.main import app

    folder = scratch / f"cli_{seed}"
    _valid_folder(folder)
    rng = np.random.default_rng(seed)
    for i in range(2):
        (folder / f"bad{i}.jpg").write_bytes(JPEG_MAGIC + rng.bytes(int(rng.integers(0, 400))))
    result = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"}).invoke(app, ["dataset-check", "--image-dir",
                                                                             str(folder)])
    assert result.exit_code == 1, result.output  # problems found: the documented exit code, not a crash
    assert result.stderr == ""
    assert "unreadable image" in result.stdout and "2" in result.stdout
