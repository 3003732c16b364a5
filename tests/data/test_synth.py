import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from uhd_core.data.synth import SynthReport, draw_person, write_synthetic_dataset

_LINE = re.compile(r"^0( [01]\.\d{6}){4}$")


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _diff_box(before: np.ndarray, after: np.ndarray):
    ys, xs = np.nonzero(np.any(before != after, axis=2))
    if len(xs) == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    a = _snapshot(write_synthetic_dataset(tmp_path / "a", n=6, seed=3).out_dir)
    b = _snapshot(write_synthetic_dataset(tmp_path / "b", n=6, seed=3).out_dir)
    c = _snapshot(write_synthetic_dataset(tmp_path / "c", n=6, seed=4).out_dir)
    assert len(a) == 12
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if k.endswith(".jpg"))


def test_image_i_does_not_depend_on_n(tmp_path):
    short = _snapshot(write_synthetic_dataset(tmp_path / "short", n=2, seed=0).out_dir)
    long = _snapshot(write_synthetic_dataset(tmp_path / "long", n=5, seed=0).out_dir)
    assert {k: long[k] for k in short} == short


def test_labels_are_yolo_person_lines_inside_the_image(tmp_path):
    out = write_synthetic_dataset(tmp_path / "ds", n=30, seed=1).out_dir
    num_lines = 0
    for txt in sorted(out.glob("*.txt")):
        img = cv2.imread(str(txt.with_suffix(".jpg")))
        assert img is not None
        h, w = img.shape[:2]
        assert 96 <= h <= 256 and 96 <= w <= 256
        text = txt.read_text()
        assert text == "" or text.endswith("\n")
        for line in text.splitlines():
            num_lines += 1
            assert _LINE.match(line), line
            cx, cy, bw, bh = (float(v) for v in line.split()[1:])
            assert all(0.0 <= v <= 1.0 for v in (cx, cy, bw, bh))
            assert bw > 0 and bh > 0
            # 6-decimal rounding allows a 1e-6 overshoot per term.
            assert cx - bw / 2 >= -2e-6 and cx + bw / 2 <= 1 + 2e-6
            assert cy - bh / 2 >= -2e-6 and cy + bh / 2 <= 1 + 2e-6
            # A box is a whole number of pixels.
            assert abs(bw * w - round(bw * w)) < 1e-3 and abs(bh * h - round(bh * h)) < 1e-3
    assert num_lines > 30  # 1..4 figures per image on average


@pytest.mark.parametrize("seed", range(40))
def test_draw_person_box_is_tight_on_blank_canvas(seed):
    rng = np.random.default_rng(seed)
    canvas = np.zeros((140, 110, 3), dtype=np.uint8)
    before = canvas.copy()
    height = float(rng.uniform(12, 120))
    box = draw_person(canvas, rng, cx=55.0 + rng.uniform(-5, 5), cy_feet=135.0, height=height)
    assert box is not None
    assert box == _diff_box(before, canvas)


def test_draw_person_partly_outside_is_clipped_to_canvas():
    canvas = np.zeros((80, 80, 3), dtype=np.uint8)
    before = canvas.copy()
    # Hips on the left border, feet far below the bottom border.
    box = draw_person(canvas, np.random.default_rng(7), cx=2.0, cy_feet=110.0, height=90.0)
    assert box is not None
    assert box == _diff_box(before, canvas)
    assert box[0] == 0.0 and box[3] == 80.0
    assert box[2] <= 80.0 and box[1] >= 0.0

    # The same figure on a canvas large enough to hold it whole extends past both borders,
    # and its in-canvas part is exactly what the small canvas got.
    off = 100
    big = np.zeros((80 + 2 * off, 80 + 2 * off, 3), dtype=np.uint8)
    big_box = draw_person(big, np.random.default_rng(7), cx=2.0 + off, cy_feet=110.0 + off, height=90.0)
    assert big_box is not None
    assert big_box[0] < off and big_box[3] > 80 + off
    np.testing.assert_array_equal(big[off:off + 80, off:off + 80], canvas)


def test_draw_person_fully_outside_returns_none_and_draws_nothing():
    canvas = np.zeros((64, 64, 3), dtype=np.uint8)
    assert draw_person(canvas, np.random.default_rng(0), cx=-200.0, cy_feet=30.0, height=40.0) is None
    assert not canvas.any()


def test_refuses_to_overwrite_and_leaves_files_unchanged(tmp_path):
    out = tmp_path / "ds"
    write_synthetic_dataset(out, n=3, seed=0)
    first = _snapshot(out)
    with pytest.raises(FileExistsError, match=re.escape(str(out))) as info:
        write_synthetic_dataset(out, n=3, seed=1)
    assert "\n" not in str(info.value)
    assert _snapshot(out) == first


def test_existing_dir_without_images_or_labels_is_fine(tmp_path):
    out = tmp_path / "nested" / "ds"
    out.mkdir(parents=True)
    (out / "README.md").write_text("notes\n")
    report = write_synthetic_dataset(out, n=2, seed=0)
    assert report.num_images == 2


def test_report_counts_match_files_and_progress_is_called(tmp_path):
    calls = []
    report = write_synthetic_dataset(
        tmp_path / "x" / "ds", n=12, seed=5, progress=lambda i, n: calls.append((i, n))
    )
    assert isinstance(report, SynthReport)
    assert report.out_dir == tmp_path / "x" / "ds"
    jpgs = sorted(report.out_dir.glob("*.jpg"))
    txts = sorted(report.out_dir.glob("*.txt"))
    assert [p.name for p in jpgs] == [f"synth_{i:06d}.jpg" for i in range(12)]
    assert [p.stem for p in txts] == [p.stem for p in jpgs]
    # No temp files are left behind.
    assert len(list(report.out_dir.iterdir())) == 24
    assert report.num_images == 12
    assert report.num_boxes == sum(len(p.read_text().splitlines()) for p in txts)
    assert calls == [(i, 12) for i in range(1, 13)]


def test_zero_images_and_bad_arguments(tmp_path):
    report = write_synthetic_dataset(tmp_path / "empty", n=0)
    assert report == SynthReport(out_dir=tmp_path / "empty", num_images=0, num_boxes=0)
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path / "neg", n=-1)
