"""`uhd export` end to end on a tiny trained checkpoint: verified file, summary, refusals, .unverified."""

from __future__ import annotations

import onnx
import pytest

from cli_helpers import WIDE
from cli_helpers import one_error_line as _one_error_line
from uhd_cli.main import app
from uhd_core.engine.api import run_training
from uhd_core.export.onnx_export import read_preprocess


@pytest.fixture(scope="module")
def tiny_checkpoint(tiny_yolo_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("export_runs")
    result = run_training(None, {"image_dir": str(tiny_yolo_dir), "runs_dir": str(runs), "cnn_width": 8,
                                 "epochs": 1, "batch_size": 16, "num_workers": 0, "device": "cpu", "use_ema": True},
                          tensorboard=False)
    return result.last_checkpoint


def test_export_merged_writes_a_verified_file_with_metadata(runner, tiny_checkpoint, tmp_path):
    out = tmp_path / "model.onnx"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--output", str(out), "--merge-postprocess",
                                 "--dynamic"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert f"verified: {out}" in result.stdout
    for text in ("params", "MACs", "output detections", "max |ORT - PyTorch| detections", "EMA", "ORT latency",
                 "cv2.dnn.readNetFromONNX", "max |OpenCV - ONNX Runtime|"):
        assert text in result.stdout, text
    model = onnx.load(str(out))
    assert [o.name for o in model.graph.output] == ["detections"]
    assert read_preprocess(out)["img_size"] == [64, 64]


def test_export_default_output_and_the_checkpoint_flag(runner, tiny_checkpoint, tmp_path):
    copy = tmp_path / "ck.pt"
    copy.write_bytes(tiny_checkpoint.read_bytes())
    result = runner.invoke(app, ["export", "--checkpoint", str(copy), "--no-use-ema"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ck.onnx").is_file() and "model (no EMA)" in result.stdout
    out = onnx.load(str(tmp_path / "ck.onnx"))
    assert [o.name for o in out.graph.output] == ["hm", "off", "wh"]


def test_existing_output_is_kept(runner, tiny_checkpoint, tmp_path):
    out = tmp_path / "mine.onnx"
    out.write_bytes(b"user file")
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--output", str(out)])
    assert result.exit_code == 2 and "--overwrite" in _one_error_line(result)
    assert out.read_bytes() == b"user file"


def test_a_file_that_fails_verification_is_kept_as_unverified(runner, tiny_checkpoint, tmp_path, monkeypatch):
    import uhd_core.export.api as api

    monkeypatch.setattr(api, "verify_onnx", lambda *a, **k: {"hm": 0.5, "off": 0.0, "wh": 0.0})
    out = tmp_path / "bad.onnx"
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--output", str(out)], env=WIDE)
    assert result.exit_code == 1
    assert not out.exists() and (tmp_path / "bad.onnx.unverified").is_file()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_is_one_line_exit_2(runner, tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    result = runner.invoke(app, ["export", str(bad), "--output", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2, result.output
    assert "bad.pt" in _one_error_line(result)
    assert not (tmp_path / "x.onnx").exists()


def test_missing_checkpoint_argument_is_one_line(runner):
    result = runner.invoke(app, ["export"])
    assert result.exit_code == 2 and "which checkpoint" in _one_error_line(result)


def test_verification_includes_real_training_images(tiny_checkpoint, tmp_path, monkeypatch):
    import uhd_core.export.api as api

    seen = []
    real_verify = api.verify_onnx

    def spy(model, path, inputs, tol):
        seen.extend(inputs)
        return real_verify(model, path, inputs, tol=tol)

    monkeypatch.setattr(api, "verify_onnx", spy)
    result = api.export_checkpoint(tiny_checkpoint, tmp_path / "m.onnx", latency=False)
    assert result.verified and len(seen) == 2  # a random input and a batch of real images
    assert seen[1].shape == (1, 3, 64, 64) and float(seen[1].std()) > 0.01
