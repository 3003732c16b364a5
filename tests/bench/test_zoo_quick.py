"""`bench/zoo.py --quick` end to end (CI): every zoo entry trains 1 epoch on tiny synthetic data,
is exported, scored and timed; the report has a row per entry with finite numbers and a PNG, and a
second run takes everything from the cache. ~15-30 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_scripts import load_bench_script

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "zoo.py"


def _zoo_module():
    return load_bench_script("zoo")


def _run(out: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache-dir", str(cache)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, f"zoo --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """Entry name -> cells of the '## Zoo' table."""
    section = markdown.split("## Zoo", 1)[1]
    rows = {}
    for line in section.splitlines():
        if not line.startswith("| ") or line.startswith(("| entry", "|---")):
            if rows and not line.startswith("|"):
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows[cells[0].strip("*")] = cells
    return rows


def _number(cell: str) -> float:
    token = cell.replace(",", "").split()[0]
    return float(token)


@pytest.mark.slow
def test_zoo_quick_report_and_cache(tmp_path: Path) -> None:
    zoo = _zoo_module()
    out, cache = tmp_path / "out", tmp_path / "cache"
    first = _run(out, cache)
    names = [e.name for e in zoo.ZOO]
    assert {"cnn", "cnn_anchor", "transformer", "transformer_l4"} <= set(names)
    for name in names:
        assert f"{name}: training 1 epochs" in first.stdout

    md = (out / "zoo.md").read_text()
    rows = _table_rows(md)
    assert list(rows) == names
    for name, cells in rows.items():
        # params, MACs, ONNX KiB, mAP@0.5, COCO mAP, p50 latency, load average
        values = [_number(c) for c in (cells[4], cells[5], cells[6], cells[7], cells[8], cells[9], cells[10])]
        assert all(math.isfinite(v) for v in values), (name, cells)
        assert values[0] > 0 and values[1] > 0 and values[2] > 0 and values[5] > 0, (name, cells)
        assert 0.0 <= values[3] <= 1.0 and 0.0 <= values[4] <= 1.0, (name, cells)
    png = out / "zoo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report = json.loads((cache / "zoo.json").read_text())
    assert [r["name"] for r in report["zoo"]] == names
    assert (cache / "entries").is_dir()

    second = _run(out, cache)
    for name in names:
        assert f"{name}: cached" in second.stdout
    assert "training" not in second.stdout and "latency phase" not in second.stdout
    again = json.loads((cache / "zoo.json").read_text())
    assert [r["result"] for r in again["zoo"]] == [r["result"] for r in report["zoo"]]
    assert [r["latency"]["p50_ms"] for r in again["zoo"]] == [r["latency"]["p50_ms"] for r in report["zoo"]]


def test_pareto_front() -> None:
    zoo = _zoo_module()
    # (latency, mAP): B is beaten by C (faster and better), D is slower and better than C
    points = [(0.1, 0.01), (0.5, 0.02), (0.3, 0.05), (2.0, 0.07), (3.0, 0.06)]
    assert zoo.pareto(points) == [0, 2, 3]


def test_flags_from_overrides() -> None:
    zoo = _zoo_module()
    assert zoo.overrides_to_flags({"cnn_width": 64, "use_ema": False, "use_skip": True}) == [
        "--cnn-width", "64", "--no-use-ema", "--use-skip"]


def test_cache_survives_a_new_runconfig_field_at_its_default(tmp_path: Path) -> None:
    """An entry made before RunConfig gained a field is reused while that field is at its default."""
    from uhd_core.config import RunConfig, build_config

    zoo = _zoo_module()
    config = build_config(None, {"image_dir": "x"}).model_dump(mode="json")
    material = {"zoo_version": zoo.ZOO_VERSION, "config": config, "data": "fp", "torch": "t"}
    old_cfg = {k: v for k, v in config.items() if k != "topk"}  # as if `topk` were added later
    entry = tmp_path / "entries" / "cnn-0123456789ab"
    entry.mkdir(parents=True)
    (entry / "entry.json").write_text(json.dumps({"name": "cnn", "result": {}, "key_material": {**material, "config": old_cfg}}))
    assert config["topk"] == RunConfig.model_fields["topk"].default
    assert zoo.compatible_entry(tmp_path, "cnn", material) == entry
    assert zoo.compatible_entry(tmp_path, "cnn_w64", material) is None
    assert zoo.compatible_entry(tmp_path, "cnn", {**material, "config": {**config, "topk": config["topk"] + 1}}) is None
    assert zoo.compatible_entry(tmp_path, "cnn", {**material, "config": {**config, "lr": 0.5}}) is None
    assert zoo.compatible_entry(tmp_path, "cnn", {**material, "torch": "other"}) is None
