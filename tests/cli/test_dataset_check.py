"""`uhd dataset-check` on the clean tiny folder and on a folder broken in every way it reports."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from cli_helpers import WIDE
from uhd_cli.main import app
from uhd_core.data.check import PROBLEMS, check_dataset


def test_clean_folder_exits_0(runner, tiny_yolo_dir):
    result = runner.invoke(app, ["dataset-check", "--image-dir", str(tiny_yolo_dir), "--classes", "0"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "clean" in result.stdout and "smaller than one output cell" in result.stdout


@pytest.fixture()
def broken(tmp_path, tiny_yolo_dir):
    d = tmp_path / "broken"
    d.mkdir()
    good = sorted(tiny_yolo_dir.glob("*.jpg"))[0]

    def image(name: str, src=good) -> None:
        shutil.copy(src, d / name)

    image("a.jpg")
    (d / "a.txt").write_text(
        "0 0.5 0.5 0.2 0.2\n"        # fine
        "0 0.5 0.5 0.2 0.2\n"        # duplicate box
        "0 0.5 0.5\n"                # malformed
        "7 0.4 0.4 0.1 0.1\n"        # class not in --classes
        "0 1.2 0.5 0.1 0.1\n"        # outside 0..1
        "0 0.5 0.5 0.0 0.1\n"        # w <= 0
        "0 0.95 0.5 0.2 0.2\n"       # extends past the image
    )
    image("dup.jpg")  # same bytes as a.jpg
    (d / "dup.txt").write_text("0 0.3 0.3 0.1 0.1\n")
    (d / "trunc.jpg").write_bytes(good.read_bytes()[:200])
    (d / "trunc.txt").write_text("0 0.3 0.3 0.1 0.1\n")
    cv2.imwrite(str(d / "gray.png"), np.full((32, 200), 128, np.uint8))  # grayscale and 6:1
    (d / "gray.txt").write_text("0 0.5 0.5 0.1 0.5\n")
    image("nolabel.jpg", sorted(tiny_yolo_dir.glob("*.jpg"))[1])
    image("empty.jpg", sorted(tiny_yolo_dir.glob("*.jpg"))[2])
    (d / "empty.txt").write_text("")
    return d


def test_every_problem_is_reported(broken):
    report = check_dataset(broken, classes=(0,))
    kinds = report.counts()
    for kind in ("duplicate box", "malformed line", "class not in --classes", "coordinates outside 0..1",
                 "w or h <= 0", "box extends past the image", "duplicate image", "unreadable image",
                 "grayscale image", "extreme aspect ratio", "image without label file", "empty label file"):
        assert kinds[kind] >= 1, kind
    assert kinds["malformed line"] == 1 and kinds["duplicate box"] == 1
    where = {f.kind: f.where for f in report.findings}
    assert where["malformed line"].endswith("a.txt:3") and where["w or h <= 0"].endswith("a.txt:6")
    assert not report.clean


def test_cli_exits_1_and_writes_json(runner, broken, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["dataset-check", "--image-dir", str(broken), "--classes", "0", "--json", str(out)],
                           env=WIDE)
    assert result.exit_code == 1, result.output
    assert "problem(s) found" in result.stdout
    data = json.loads(out.read_text())
    assert {f["kind"] for f in data["findings"]} & PROBLEMS
    assert data["images"] == 6 and data["class_histogram"]["7"] == 1


def test_missing_folder_is_exit_2(runner, tmp_path):
    result = runner.invoke(app, ["dataset-check", "--image-dir", str(tmp_path / "none")])
    assert result.exit_code == 2


def test_fix_writes_a_repaired_copy_and_lists_every_change(runner, broken, tmp_path):
    before = {p.name: p.read_bytes() for p in broken.iterdir()}
    out = tmp_path / "fixed"
    result = runner.invoke(app, ["dataset-check", "--image-dir", str(broken), "--classes", "0", "--fix", str(out)],
                           env=WIDE)
    assert result.exit_code == 1, result.output  # the original still has problems
    assert {p.name: p.read_bytes() for p in broken.iterdir()} == before  # originals untouched
    report = json.loads((out / "fix_report.json").read_text())
    reasons = {d["reason"] for d in report["dropped_lines"]}
    assert {"malformed line", "w or h <= 0", "duplicate box", "no area inside the image"} <= reasons  # line 5: x 1.15..1.25
    assert {d["file"] for d in report["dropped_images"]} == {"dup.jpg", "trunc.jpg"}
    assert report["converted"] == ["gray.png -> gray.png"]
    assert [c["line"] for c in report["clipped_lines"] if c["file"] == "a.txt"] == [7]
    # the repaired copy checks clean (class 7 is a valid line, so check it with its classes)
    fixed_report = check_dataset(out, classes=(0, 7))
    assert fixed_report.clean, [f for f in fixed_report.findings if f.kind in PROBLEMS]
    assert cv2.imread(str(out / "gray.png"), cv2.IMREAD_UNCHANGED).shape[2] == 3
    # never into a folder that holds files
    again = runner.invoke(app, ["dataset-check", "--image-dir", str(broken), "--fix", str(out)])
    assert again.exit_code == 2
