"""`uhd bench` on tiny exports: the table, JSON rows, and the static-batch refusal."""

from __future__ import annotations

import json

import pytest

from cli_helpers import WIDE
from cli_helpers import one_error_line as _one_error_line
from uhd_cli.main import app
from uhd_core.config import build_config
from uhd_core.export.onnx_export import export_onnx
from uhd_core.models.detector import build_detector


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    cfg = build_config(None, {"cnn_width": 8})
    model = build_detector(cfg).eval()
    dynamic = export_onnx(model, cfg, root / "dyn.onnx", merge_postprocess=True, dynamic=True).path
    static = export_onnx(model, cfg, root / "static.onnx", merge_postprocess=True).path
    return dynamic, static


def test_bench_rows_per_setting_and_json(runner, exports, tmp_path):
    dynamic, _ = exports
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", str(dynamic), "--threads", "1,2", "--batch", "1,3", "--runs", "5",
                                 "--json", str(out)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.stdout and "GMAC/s" in result.stdout and "MACs/image" in result.stdout
    rows = json.loads(out.read_text())["rows"]
    assert [(r["threads"], r["batch"]) for r in rows] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    assert all(0 < r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] for r in rows)


def test_static_batch_export_refuses_other_batches(runner, exports):
    _, static = exports
    result = runner.invoke(app, ["bench", str(static), "--batch", "4", "--runs", "2"])
    assert result.exit_code == 2 and "static batch of 1" in _one_error_line(result)


@pytest.mark.parametrize("args", [["--threads", "0"], ["--batch", "x"]])
def test_bad_lists_are_one_line(runner, exports, args):
    result = runner.invoke(app, ["bench", str(exports[0]), *args])
    assert result.exit_code == 2 and "expected comma-separated positive integers" in _one_error_line(result)
