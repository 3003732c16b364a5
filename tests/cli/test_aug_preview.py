"""`uhd aug-preview`: the PNG grid (size, tiles), the op table, --per-op, and refusing to overwrite."""

from __future__ import annotations

import cv2
import pytest

from cli_helpers import WIDE
from cli_helpers import one_error_line as _one_error_line
from uhd_cli.main import app
from uhd_core.augment import AUGMENT_OPS
from uhd_core.augment.preview import CAPTION_LINE_PX, CAPTION_LINES

TILE_W, TILE_H = 64 * 2, 64 * 2 + CAPTION_LINES * CAPTION_LINE_PX + 3  # --scale 2


def test_preview_writes_a_grid_of_the_expected_size_and_the_op_table(runner, tiny_yolo_dir, tmp_path):
    out = tmp_path / "p.png"
    result = runner.invoke(app, ["aug-preview", "uhd/aug.yaml", "--image-dir", str(tiny_yolo_dir), "--n", "3",
                                 "--variants", "4", "--scale", "2", "--out", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    image = cv2.imread(str(out))
    assert image.shape == (3 * TILE_H, 5 * TILE_W, 3)  # 3 rows x (original + 4 variants)
    for op in ("RandomPhotometricDistort", "RandomHSV", "HorizontalFlip", "RemoveOutliers"):
        assert op in result.stdout
    assert "mean ms" in result.stdout and "boxes dropped" in result.stdout and str(out) in result.stdout


def test_per_op_has_one_column_per_active_op(runner, tiny_yolo_dir, tmp_path):
    config = tmp_path / "two.yaml"
    config.write_text("data_augment:\n  VerticalFlip: 0.1\n  Mosaic: {prob: 0.2}\n")
    out = tmp_path / "p.png"
    result = runner.invoke(app, ["aug-preview", str(config), "--image-dir", str(tiny_yolo_dir), "--n", "2",
                                 "--scale", "2", "--per-op", "--out", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out)).shape == (2 * TILE_H, 3 * TILE_W, 3)
    # forced on: each op applied once per row
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.count("│") > 4}
    assert rows["VerticalFlip"].split("│")[3].strip() == "2" and rows["Mosaic"].split("│")[3].strip() == "2"


def test_every_registered_op_at_prob_one_runs(runner, tiny_yolo_dir, tmp_path):
    config = tmp_path / "all.yaml"
    config.write_text("data_augment:\n" + "".join(f"  {name}: {{prob: 1.0}}\n" for name in AUGMENT_OPS))
    result = runner.invoke(app, ["aug-preview", str(config), "--image-dir", str(tiny_yolo_dir), "--n", "4",
                                 "--out", str(tmp_path / "all.png")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert len(AUGMENT_OPS) == 27


def test_existing_output_is_not_overwritten(runner, tiny_yolo_dir, tmp_path):
    out = tmp_path / "mine.png"
    out.write_bytes(b"user data")
    result = runner.invoke(app, ["aug-preview", "--image-dir", str(tiny_yolo_dir), "--out", str(out)])
    assert result.exit_code == 2
    assert "--overwrite" in _one_error_line(result)
    assert out.read_bytes() == b"user data"


@pytest.mark.parametrize(("args", "expect"), [
    (["no_such.yaml"], "not found"),
    (["--image-dir", "/no/such/dir"], "does not exist"),
])
def test_bad_input_is_one_line(runner, tmp_path, args, expect):
    result = runner.invoke(app, ["aug-preview", *args, "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 2, result.output
    assert expect in _one_error_line(result)
