"""`uhd eval` on a checkpoint and on its ONNX exports (merged and raw): the same numbers."""

from __future__ import annotations

import json

import pytest

from cli_helpers import WIDE
from cli_helpers import one_error_line as _one_error_line
from uhd_cli.main import app
from uhd_core.engine.api import run_training
from uhd_core.evaluation import evaluate_model
from uhd_core.export.api import export_checkpoint


@pytest.fixture(scope="module")
def trained(tiny_yolo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_runs")
    result = run_training(None, {"image_dir": str(tiny_yolo_dir), "runs_dir": str(root), "cnn_width": 8,
                                 "epochs": 3, "lr": 0.02, "batch_size": 16, "num_workers": 0, "device": "cpu",
                                 "use_ema": True}, tensorboard=False)
    merged = export_checkpoint(result.last_checkpoint, root / "merged.onnx", merge_postprocess=True,
                               latency=False).path
    raw = export_checkpoint(result.last_checkpoint, root / "raw.onnx", latency=False).path
    return result.last_checkpoint, merged, raw


def test_checkpoint_and_its_exports_score_the_same(trained, tiny_yolo_dir):
    ckpt, merged, raw = trained
    reports = [evaluate_model(path, tiny_yolo_dir) for path in (ckpt, merged, raw)]
    assert reports[0].num_images == reports[1].num_images == reports[2].num_images > 0
    for other in reports[1:]:
        assert other.map_voc == pytest.approx(reports[0].map_voc, abs=1e-3)
        assert other.coco_map_50_95 == pytest.approx(reports[0].coco_map_50_95, abs=1e-3)
    r = reports[0]
    assert 0.0 <= r.coco_map_50_95 <= r.coco_map_50 <= 1.0
    assert 0.0 <= r.best_f1 <= 1.0 and 0.0 <= r.best_f1_threshold <= 1.0
    assert r.best_f1 >= r.f1 - 1e-9  # the best threshold is at least as good as the configured one


def test_eval_cli_prints_the_table_and_writes_json(runner, trained, tiny_yolo_dir, tmp_path):
    _, merged, _ = trained
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", str(merged), "--image-dir", str(tiny_yolo_dir), "--json", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    for text in ("mAP@0.5 (VOC all-point)", "COCO mAP@[.5:.95]", "COCO AP50", "best F1", "images/s"):
        assert text in result.stdout
    data = json.loads(out.read_text())
    assert data["num_images"] > 0 and 0.0 <= data["map_voc"] <= 1.0


@pytest.mark.parametrize("content", [b"", b"not onnx at all"])
def test_corrupt_onnx_is_one_line_exit_2(runner, tiny_yolo_dir, tmp_path, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    result = runner.invoke(app, ["eval", str(bad), "--image-dir", str(tiny_yolo_dir)])
    assert result.exit_code == 2, result.output
    assert "bad.onnx" in _one_error_line(result)
