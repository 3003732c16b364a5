"""`bench/utod_sweep.py --quick` end to end: cnn_s8 trains 1 epoch on tiny synthetic data through the
`uhd` commands (train, export, eval on the val and train split, bench), the report gets one row of
finite numbers between its markers (the rest of the file kept), and a rerun takes it from the cache.
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
SCRIPT = REPO / "bench" / "utod_sweep.py"


def _sweep_module():
    return load_bench_script("utod_sweep")


def _run(out: Path, cache: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache-dir", str(cache)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"utod_sweep --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.slow
def test_quick_sweep_report_and_cache(tmp_path: Path) -> None:
    sweep = _sweep_module()
    out, cache = tmp_path / "sweep.md", tmp_path / "cache"
    out.write_text(f"# Notes kept\n\nbefore\n\n{sweep.BEGIN}\nold table\n{sweep.END}\n\nafter\n")
    first = _run(out, cache)
    for step in ("train", "export", "val", "train_split", "bench"):
        assert f"cnn_s8_quick: {step}\n" in first
    text = out.read_text()
    assert text.startswith("# Notes kept\n\nbefore\n\n") and text.endswith("\n\nafter\n") and "old table" not in text
    (row,) = [line for line in text.splitlines() if line.startswith("| cnn_s8_quick |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    params, macs, ms, val, coco, train_map = (float(cells[i].replace(",", "").split()[0]) for i in range(2, 8))
    assert params == 14501 and macs > 0 and ms > 0 and all(math.isfinite(v) for v in (val, coco, train_map))
    assert 0 <= val <= 1 and 0 <= train_map <= 1
    rec = json.loads((cache / "cnn_s8_quick" / "result.json").read_text())
    assert rec["val"]["num_images"] == rec["train"]["num_val"]
    assert rec["command"].startswith("uhd train --preset cnn_s8 --epochs 1") and "--threads 1" in rec["command"]

    second = _run(out, cache)
    assert "cnn_s8_quick: cached" in second
    assert not any(f"cnn_s8_quick: {step}\n" in second for step in ("train", "export", "val", "bench"))
    assert json.loads((cache / "cnn_s8_quick" / "result.json").read_text()) == rec


def test_specs_parse_from_the_command_line_and_a_file(tmp_path: Path) -> None:
    sweep = _sweep_module()
    assert sweep.parse_spec("w16: utod --arch-options 'width=16' --epochs 5") == sweep.Spec(
        "w16", "utod", ("--arch-options", "width=16", "--epochs", "5"))
    with pytest.raises(ValueError, match="NAME: PRESET"):
        sweep.parse_spec("no preset")
    path = tmp_path / "specs.yaml"
    path.write_text("- {name: a, preset: cnn_s8, flags: '--epochs 3'}\n- {name: b, preset: cnn, flags: [--lr, '0.01']}\n")
    assert sweep.read_specs(path) == [sweep.Spec("a", "cnn_s8", ("--epochs", "3")),
                                      sweep.Spec("b", "cnn", ("--lr", "0.01"))]


def test_a_changed_spec_gets_a_new_key() -> None:
    sweep = _sweep_module()
    base = sweep.Spec("a", "cnn_s8", ("--epochs", "3"))
    data = Path("/data")
    key = sweep.spec_key(base, sweep.train_args(base, data, Path("CACHE")), "fp")
    other = sweep.Spec("a", "cnn_s8", ("--epochs", "4"))
    assert key != sweep.spec_key(other, sweep.train_args(other, data, Path("CACHE")), "fp")
    assert key != sweep.spec_key(base, sweep.train_args(base, data, Path("CACHE")), "fp2")
