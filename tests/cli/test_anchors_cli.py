"""`uhd anchors` through Typer's CliRunner: the report, the paste string, --json, one-line errors."""

from __future__ import annotations

import json

import pytest

from cli_helpers import one_error_line as _one_error_line
from uhd_cli.main import app
from uhd_core.anchors import anchor_report, fit_anchors, format_anchor_string, parse_anchor_string
from uhd_core.data.dataset import load_box_sizes

GIVEN = "0.08,0.10 0.15,0.20"


def test_auto_with_given_anchors_prints_report_and_writes_json(runner, tiny_yolo_dir, tmp_path):
    out = tmp_path / "sub" / "anchors.json"
    result = runner.invoke(app, ["anchors", "--auto", "--image-dir", str(tiny_yolo_dir), "--num-anchors", "3",
                                 "--evolve", "50", "--seed", "1", "--anchors", GIVEN, "--json", str(out)])
    assert result.exit_code == 0, result.output

    wh = load_box_sizes(tiny_yolo_dir, (0,))
    computed = anchor_report(wh, fit_anchors(wh, 3, seed=1, evolve_generations=50))
    given = anchor_report(wh, parse_anchor_string(GIVEN))
    paste = format_anchor_string([(a.w, a.h) for a in computed.anchors])

    assert "BPR" in result.stdout and "mean best IoU" in result.stdout
    assert f'--anchors "{paste}"' in result.stdout
    assert f"{computed.bpr:.4f}" in result.stdout and f"{given.bpr:.4f}" in result.stdout

    data = json.loads(out.read_text())
    assert set(data) == {"computed", "given", "anchors_string", "num_boxes", "image_dir", "img_size"}
    assert data["computed"] == computed.to_dict()
    assert data["given"] == given.to_dict()
    assert data["anchors_string"] == paste
    assert data["num_boxes"] == len(wh)
    assert data["img_size"] == [64, 64]


def test_given_anchors_only(runner, tiny_yolo_dir, tmp_path):
    out = tmp_path / "a.json"
    result = runner.invoke(app, ["anchors", "--image-dir", str(tiny_yolo_dir), "--anchors", GIVEN,
                                 "--img-size", "96x128", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "BPR" in result.stdout and "computed" not in result.stdout
    assert "10.2 x 9.6" in result.stdout  # 0.08 * 128 px wide, 0.10 * 96 px high (HxW)
    data = json.loads(out.read_text())
    assert "computed" not in data and data["img_size"] == [96, 128]
    assert data["anchors_string"] == "0.080000,0.100000 0.150000,0.200000"


def test_neither_auto_nor_anchors_is_exit_2(runner, tiny_yolo_dir):
    result = runner.invoke(app, ["anchors", "--image-dir", str(tiny_yolo_dir)])
    assert result.exit_code == 2
    assert "--auto" in _one_error_line(result)


def test_no_boxes_of_the_classes_is_exit_2_one_line(runner, tiny_yolo_dir):
    result = runner.invoke(app, ["anchors", "--auto", "--image-dir", str(tiny_yolo_dir), "--classes", "5"])
    assert result.exit_code == 2
    assert "no boxes of --classes 5" in _one_error_line(result)


@pytest.mark.parametrize("args", [["--image-dir", "{missing}"], ["--anchors", "0.1,0.2,0.3"]])
def test_bad_input_is_exit_2_one_line(runner, tiny_yolo_dir, tmp_path, args):
    args = [a.format(missing=tmp_path / "nope") for a in args]
    base = ["anchors", "--auto", "--image-dir", str(tiny_yolo_dir)]
    result = runner.invoke(app, base + args)
    assert result.exit_code == 2
    _one_error_line(result)
