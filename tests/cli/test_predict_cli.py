"""`uhd predict` over a folder, one image and a video: annotated outputs, the JSON schema, YOLO txt."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from cli_helpers import WIDE
from cli_helpers import one_error_line as _one_error_line
from uhd_cli.main import app
from uhd_core.checkpoint import save_checkpoint
from uhd_core.config import build_config
from uhd_core.models.detector import build_detector


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """An untrained tiny CNN checkpoint: heatmap prior ~0.1 everywhere, fixed 2-cell boxes (so detections exist)."""
    cfg = build_config(None, {"cnn_width": 8, "classes": "3", "topk": 5})
    torch.manual_seed(0)
    model = build_detector(cfg)
    with torch.no_grad():  # boxes of ~2 cells around the cell centres, so every peak is a real box
        model.head.wh.weight.zero_()
        model.head.wh.bias.fill_(2.0)
        model.head.off.weight.zero_()
        model.head.off.bias.fill_(0.5)
    path = tmp_path_factory.mktemp("predict_model") / "m.pt"
    save_checkpoint(path, {"config": cfg.model_dump(mode="json"), "model": model.state_dict(), "ema": None})
    return path


def test_folder_writes_annotated_images_json_and_txt(runner, model_file, tiny_yolo_dir, tmp_path):
    out, js = tmp_path / "out", tmp_path / "pred.json"
    result = runner.invoke(app, ["predict", str(model_file), "--source", str(tiny_yolo_dir), "--out", str(out),
                                 "--conf-thresh", "0.0", "--json", str(js), "--save-txt"], env=WIDE)
    assert result.exit_code == 0, result.output
    images = sorted(p.name for p in tiny_yolo_dir.glob("*.jpg"))
    data = json.loads(js.read_text())
    assert data["model"] == str(model_file)
    assert [r["file"] for r in data["images"]] == images
    first = data["images"][0]
    assert set(first) == {"file", "width", "height", "detections"}
    assert first["width"] > 0 and first["height"] > 0 and len(first["detections"]) <= 5
    first = next(r for r in data["images"] if r["detections"])
    det = first["detections"][0]
    assert set(det) == {"score", "class_id", "box_cxcywh"} and det["class_id"] == 3  # the source class id
    cx, cy, w, h = det["box_cxcywh"]  # cut to the image
    assert -1e-6 <= cx - w / 2 and cx + w / 2 <= 1 + 1e-6 and -1e-6 <= cy - h / 2 and cy + h / 2 <= 1 + 1e-6
    assert sorted(p.name for p in out.glob("*.jpg")) == images
    txt = (out / "labels" / images[0]).with_suffix(".txt").read_text().splitlines()
    assert len(txt) == len(first["detections"]) and txt[0].split()[0] == "3"


def test_single_image_and_refusing_a_full_out_dir(runner, model_file, tiny_yolo_dir, tmp_path):
    image = sorted(tiny_yolo_dir.glob("*.jpg"))[0]
    out = tmp_path / "one"
    assert runner.invoke(app, ["predict", str(model_file), "--source", str(image), "--out", str(out)]).exit_code == 0
    assert (out / image.name).is_file()
    again = runner.invoke(app, ["predict", str(model_file), "--source", str(image), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in _one_error_line(again)


def test_video_gives_an_annotated_video_and_one_record_per_frame(runner, model_file, tmp_path):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (96, 64))
    for i in range(5):
        writer.write(np.full((64, 96, 3), 40 * i, dtype=np.uint8))
    writer.release()
    js = tmp_path / "v.json"
    result = runner.invoke(app, ["predict", str(model_file), "--source", str(video), "--out", str(tmp_path / "vo"),
                                 "--json", str(js), "--conf-thresh", "0.0"])
    assert result.exit_code == 0, result.output
    records = json.loads(js.read_text())["images"]
    assert [r["file"] for r in records] == [f"clip.avi#{i:06d}" for i in range(5)]
    assert records[0]["width"] == 96 and records[0]["height"] == 64
    assert (tmp_path / "vo" / "clip_pred.mp4").stat().st_size > 0


def test_missing_source_is_one_line(runner, model_file, tmp_path):
    result = runner.invoke(app, ["predict", str(model_file), "--source", str(tmp_path / "nope"), "--out",
                                 str(tmp_path / "o")])
    assert result.exit_code == 2 and "does not exist" in _one_error_line(result)
