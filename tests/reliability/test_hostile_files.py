"""Hostile dataset files (issue 16, the reading side): names that are not UTF-8, decompression bombs,
FIFOs, symlinks out of the dataset, a killed or failing `dataset-check --fix`, an unusable decode cache.

Every dataset read goes through one guard (uhd_core/data/files.py, images.read_image_bytes); these
tests give it each kind of file through `uhd train`, `uhd eval` and `uhd dataset-check`.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import uhd_core.data.check as check_module
import uhd_core.data.dataset as dataset_module
from uhd_core.data.check import check_dataset, fix_dataset
from uhd_core.data.dataset import decode_all, decode_workers, scan_yolo_folder
from uhd_core.data.images import check_pixel_budget, header_size
from uhd_core.data.synth import write_synthetic_dataset
from uhd_core.engine.api import run_training
from uhd_core.engine.events import read_events
from uhd_core.errors import OutputError
from uhd_runner import assert_one_error_line, run_uhd

#: あ in Shift-JIS: what a Japanese zip file's names look like once unpacked on Linux.
SJIS_NAME = b"\x82\xa0"


def _dataset(folder: Path, n: int = 12) -> Path:
    write_synthetic_dataset(folder, n=n, seed=3)
    return folder


def _train(data: Path, runs: Path, **extra: Any):
    flags = {"image_dir": str(data), "runs_dir": str(runs), "exp_name": "hostile", "cnn_width": 8,
             "batch_size": 4, "num_workers": 0, "img_size": "64x64", "epochs": 1, "seed": 0, "device": "cpu",
             **extra}
    return run_training(None, flags, tensorboard=False)


def _data_prepared(run_dir: Path) -> dict[str, Any]:
    (event,) = [e for e in read_events(run_dir / "events.jsonl") if e["event"] == "DataPrepared"]
    return event


def _cli(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """`uhd ARGS` in a subprocess: a hang fails the test (TimeoutExpired) instead of hanging the suite."""
    # errors=backslashreplace: a path printed back may hold the raw bytes of a non-UTF-8 name.
    return subprocess.run([sys.executable, "-m", "uhd_cli", *map(str, args)], capture_output=True, text=True,
                          errors="backslashreplace", timeout=timeout, env={**os.environ, "COLUMNS": "250", "NO_COLOR": "1", "CI": "1"})


# ------------------------------------------------------------------------------------------------
# Finding 1: names that are not UTF-8

@pytest.fixture()
def sjis_dataset(tmp_path: Path) -> tuple[Path, str]:
    data = _dataset(tmp_path / "data")
    stem = os.fsdecode(os.fsencode(data) + b"/" + SJIS_NAME)
    try:
        os.rename(data / "synth_000000.jpg", stem + ".jpg")
    except (OSError, UnicodeEncodeError):  # e.g. macOS APFS, which refuses names that are not UTF-8
        pytest.skip("this file system refuses names that are not UTF-8")
    label = Path(stem + ".txt")
    # one bad line, so that a message quoting the file's name is written to train.log and the terminal
    label.write_text((data / "synth_000000.txt").read_text() + "0 0.5 0.5\n")
    (data / "synth_000000.txt").unlink()
    return data, Path(stem + ".jpg").name


def test_a_non_utf8_name_trains_evals_and_is_checked(sjis_dataset, tmp_path, monkeypatch):
    data, name = sjis_dataset
    result = _train(data, tmp_path / "runs")
    split = json.loads((result.run_dir / "split.json").read_text())
    assert name in split["train"] + split["val"]  # trained on, not skipped
    log = (result.run_dir / "train.log").read_text(encoding="utf-8")
    assert "\\x82\\xa0.txt:" in log  # its bad line is named, rendered printable

    code, out, err = run_uhd(["eval", result.last_checkpoint, "--image-dir", data], monkeypatch)
    assert code == 0, err[-2000:]

    code, out, err = run_uhd(["dataset-check", "--image-dir", data, "--classes", "0"], monkeypatch)
    assert code == 1 and "Traceback" not in err, err[-2000:]  # the bad line is a problem; no crash
    assert "\\x82\\xa0.txt:" in out and "malformed line" in out
    assert check_dataset(data).images == 12


def test_the_decode_cache_key_hashes_the_name_bytes(sjis_dataset):
    data, name = sjis_dataset
    key = dataset_module.cache_key(data, [name], (64, 64), "area")
    assert key != dataset_module.cache_key(data, ["synth_000001.jpg"], (64, 64), "area")


# ------------------------------------------------------------------------------------------------
# Finding 8: decompression bombs

def _png_bomb(path: Path, width: int = 30000, height: int = 30000) -> None:
    """A small valid PNG whose IHDR (CRC fixed up) declares width x height: decoding it would
    allocate width * height * 3 bytes (2.7 GB); only its header may ever be read."""
    ok, buf = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    path.write_bytes(bytes(data))


@pytest.fixture()
def never_decodes_bombs(monkeypatch):
    """cv2.imdecode, watched: the test fails if it is ever handed a buffer whose header declares the bomb."""
    real = cv2.imdecode
    seen: list[tuple[int, int]] = []

    def spy(buf, flags):
        size = header_size(bytes(np.asarray(buf, np.uint8)[:4096]))
        seen.append(size)
        assert size is None or size[0] * size[1] <= 64_000_000, f"decoded a {size} image"
        return real(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return seen


def test_the_pixel_budget_is_read_from_the_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_bomb(bomb)
    data = bomb.read_bytes()
    assert len(data) < 200 and header_size(data) == (30000, 30000)
    with pytest.raises(Exception, match="30000x30000 pixels .* above --max-image-pixels 64000000"):
        check_pixel_budget(data, 64_000_000)
    assert check_pixel_budget(data, 10**9) == (30000, 30000)  # a raised budget lets it through, still undecoded
    for ext in (".jpg", ".png", ".bmp", ".webp", ".tiff", ".ppm"):
        ok, buf = cv2.imencode(ext, np.zeros((37, 53, 3), np.uint8))
        assert header_size(buf.tobytes()) == (53, 37), ext


def test_a_bomb_is_skipped_and_named_in_training_and_reported_by_dataset_check(tmp_path, monkeypatch,
                                                                                never_decodes_bombs):
    data = _dataset(tmp_path / "data")
    _png_bomb(data / "bomb.png")
    (data / "bomb.txt").write_text("0 0.5 0.5 0.2 0.2\n")

    result = _train(data, tmp_path / "runs")
    prepared = _data_prepared(result.run_dir)
    assert prepared["num_decode_failures"] == 1
    assert any("bomb.png" in e and "--max-image-pixels" in e for e in prepared["examples"]), prepared["examples"]
    assert never_decodes_bombs  # the spy saw the dataset's other images

    code, out, err = run_uhd(["dataset-check", "--image-dir", data, "--classes", "0"], monkeypatch)
    assert code == 1 and err == "", err[-2000:]
    assert "unreadable image" in out and "bomb.png" in out and "30000x30000" in out
    # --max-image-pixels is passed through (a lower budget refuses the 64x64 images too)
    code, out, _ = run_uhd(["dataset-check", "--image-dir", data, "--max-image-pixels", "100"], monkeypatch)
    assert code == 1 and "above --max-image-pixels 100" in out


def test_the_decode_pool_is_bounded_by_memory_not_by_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert decode_workers(64_000_000) * 6 * 64_000_000 <= dataset_module.DECODE_MEMORY_BUDGET
    assert decode_workers(64_000_000) >= 1 and decode_workers(10**12) == 1
    assert decode_workers(100_000) == 64  # small budgets use every core


# ------------------------------------------------------------------------------------------------
# Finding 9: FIFOs (and other non-regular files)

@pytest.fixture()
def fifo_dataset(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    data = _dataset(tmp_path / "data")
    os.unlink(data / "synth_000001.txt")
    os.mkfifo(data / "synth_000001.txt")  # a label that is a FIFO: opening it blocks forever
    os.unlink(data / "synth_000002.jpg")
    os.mkfifo(data / "synth_000002.jpg")  # an image that is a FIFO
    return data


def test_fifo_label_and_image_are_skipped_and_named_by_train(fifo_dataset, tmp_path):
    proc = _cli(["train", "--image-dir", fifo_dataset, "--runs-dir", tmp_path / "runs", "--epochs", "1",
                 "--cnn-width", "8", "--batch-size", "4", "--num-workers", "0", "--device", "cpu"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    prepared = _data_prepared(tmp_path / "runs" / "default")
    examples = "\n".join(prepared["examples"])
    assert "synth_000001.txt" in examples and "FIFO" in examples
    assert "synth_000002.jpg" in examples


def test_fifo_label_and_image_are_reported_by_dataset_check(fifo_dataset, tmp_path):
    proc = _cli(["dataset-check", "--image-dir", fifo_dataset, "--fix", tmp_path / "fixed"])
    assert proc.returncode == 1 and proc.stderr == "", proc.stderr[-3000:]
    assert "unreadable label file" in proc.stdout and "synth_000001.txt" in proc.stdout
    assert "unreadable image" in proc.stdout and "synth_000002.jpg" in proc.stdout and "FIFO" in proc.stdout
    dropped = {d["file"] for d in json.loads((tmp_path / "fixed" / "fix_report.json").read_text())["dropped_images"]}
    assert {"synth_000001.jpg", "synth_000002.jpg"} <= dropped


def test_the_file_guard_refuses_a_fifo_without_opening_it(fifo_dataset):
    index = scan_yolo_folder(fifo_dataset, (0,))  # returns at all: the FIFO label was not opened
    assert any("synth_000001.txt" in str(i) and "FIFO" in str(i) for i in index.issues)
    decoded = decode_all(fifo_dataset, ["synth_000002.jpg"], (16, 16), "area", cache_dir=None)
    assert not decoded.ok[0] and "FIFO" in decoded.errors[0]


# ------------------------------------------------------------------------------------------------
# Finding 10: symlinks out of the dataset

SECRET = "root:$6$SECRETHASH" + "x" * 200 + ":19000:0:99999:7:::"


@pytest.fixture()
def symlinked_dataset(tmp_path: Path) -> Path:
    data = _dataset(tmp_path / "data")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow").write_text(SECRET + "\n")
    os.unlink(data / "synth_000003.txt")
    os.symlink(outside / "shadow", data / "synth_000003.txt")  # a label leading out of the dataset
    shutil.move(data / "synth_000004.jpg", outside / "img.jpg")
    os.symlink(outside / "img.jpg", data / "synth_000004.jpg")  # an image leading out of it
    # a symlink that stays inside the dataset is an ordinary file
    (data / "sub").mkdir()
    shutil.move(data / "synth_000005.jpg", data / "sub" / "real.jpg")
    os.symlink(Path("sub") / "real.jpg", data / "synth_000005.jpg")
    return data


def test_symlinks_out_of_the_dataset_are_skipped_and_never_quoted(symlinked_dataset, tmp_path, monkeypatch):
    data = symlinked_dataset
    report_path, fixed = tmp_path / "report.json", tmp_path / "fixed"
    code, out, err = run_uhd(["dataset-check", "--image-dir", data, "--json", report_path, "--fix", fixed],
                             monkeypatch)
    assert code == 1 and err == "", err[-2000:]
    written = out + report_path.read_text() + (fixed / "fix_report.json").read_text()
    assert "SECRETHASH" not in written
    report = json.loads(report_path.read_text())
    refused = {Path(f["where"]).name: f["detail"] for f in report["findings"] if f["kind"].startswith("unreadable")}
    assert set(refused) == {"synth_000003.txt", "synth_000004.jpg"}
    assert all("outside the dataset folder" in d and "--follow-symlinks" in d for d in refused.values())

    result = _train(data, tmp_path / "runs")
    examples = "\n".join(_data_prepared(result.run_dir)["examples"])
    assert "synth_000003.txt" in examples and "synth_000004.jpg" in examples and "SECRET" not in examples
    split = json.loads((result.run_dir / "split.json").read_text())
    assert "synth_000005.jpg" in split["train"] + split["val"]  # the inside symlink was read


def test_follow_symlinks_reads_them_and_quotes_at_most_80_characters(symlinked_dataset, tmp_path, monkeypatch):
    data = symlinked_dataset
    report_path, fixed = tmp_path / "report.json", tmp_path / "fixed"
    code, out, err = run_uhd(["dataset-check", "--image-dir", data, "--follow-symlinks", "--json", report_path,
                              "--fix", fixed], monkeypatch)
    assert code == 1 and err == "", err[-2000:]
    (malformed,) = [f for f in json.loads(report_path.read_text())["findings"]
                    if f["kind"] == "malformed line" and "synth_000003.txt" in f["where"]]
    assert malformed["where"].endswith("synth_000003.txt:1")
    assert malformed["detail"] == SECRET[:77] + "..."
    (dropped,) = [d for d in json.loads((fixed / "fix_report.json").read_text())["dropped_lines"]
                  if d["file"] == "synth_000003.txt"]
    assert dropped["text"] == SECRET[:77] + "..."
    assert SECRET[80:] not in out + report_path.read_text() + (fixed / "fix_report.json").read_text()

    result = _train(data, tmp_path / "runs", follow_symlinks=True)
    assert _data_prepared(result.run_dir)["num_decode_failures"] == 0  # the outside image was read


# ------------------------------------------------------------------------------------------------
# Finding 7b and 11: --fix is all or nothing, and follows the output rule

_KILL_MIDWAY = """
import os, signal, sys
import uhd_core.data.check as check
real, calls = check._write_synced, [0]
def write(path, data):
    calls[0] += 1
    if calls[0] == 7:
        os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the copy
    real(path, data)
check._write_synced = write
check.fix_dataset(sys.argv[1], sys.argv[2])
"""


def test_kill_9_during_fix_leaves_no_result(tmp_path):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "fixed"
    proc = subprocess.run([sys.executable, "-c", _KILL_MIDWAY, str(data), str(out)], timeout=120)
    assert proc.returncode == -9
    assert not out.exists()  # no half copy that would check "clean"
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".fixed")]
    assert leftovers and all(p.name.endswith(".tmp") and not (p / "fix_report.json").exists() for p in leftovers)
    # the next run builds the copy and removes the dead run's temp folder
    summary = fix_dataset(data, out)
    assert summary.images_written == 12 and (out / "fix_report.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".fixed")] == []


def test_a_full_disk_during_fix_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "data")
    out = tmp_path / "fixed"
    real, calls = check_module._write_synced, [0]

    def write(path, payload):
        calls[0] += 1
        if calls[0] == 5:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, payload)

    monkeypatch.setattr(check_module, "_write_synced", write)
    code, out_text, err = run_uhd(["dataset-check", "--image-dir", data, "--fix", out], monkeypatch)
    line = assert_one_error_line(err, "no space left on the device")
    assert "--fix" in line and code == 2
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".fixed")] == []


def test_fix_and_json_follow_the_output_rule(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "data")
    label = data / "synth_000000.txt"
    before = label.read_bytes()
    for args, expect in (
        (["--json", label, "--overwrite"], "inside the input dataset"),  # a label, even with --overwrite
        (["--json", data / "report.json", "--overwrite"], "inside the input dataset"),
        (["--fix", data / "fixed", "--overwrite"], "inside the input dataset"),
        (["--fix", tmp_path, "--overwrite"], "contains the input dataset"),
    ):
        code, _, err = run_uhd(["dataset-check", "--image-dir", data, *args], monkeypatch)
        assert_one_error_line(err, expect)
        assert code == 2
    assert label.read_bytes() == before and not (data / "report.json").exists() and not (data / "fixed").exists()

    existing = tmp_path / "report.json"
    existing.write_text("keep")
    code, _, err = run_uhd(["dataset-check", "--image-dir", data, "--json", existing], monkeypatch)
    assert_one_error_line(err, "--overwrite")
    assert code == 2 and existing.read_text() == "keep"
    code, _, err = run_uhd(["dataset-check", "--image-dir", data, "--json", existing, "--overwrite"], monkeypatch)
    assert code == 0 and json.loads(existing.read_text())["images"] == 12

    others = tmp_path / "others"
    others.mkdir()
    (others / "thesis.tex").write_text("mine")
    code, _, err = run_uhd(["dataset-check", "--image-dir", data, "--fix", others, "--overwrite"], monkeypatch)
    assert_one_error_line(err, "not an earlier --fix result")
    assert (others / "thesis.tex").read_text() == "mine"

    fixed = tmp_path / "fixed"
    fix_dataset(data, fixed)
    with pytest.raises(OutputError, match="--overwrite"):
        fix_dataset(data, fixed)
    (data / "synth_000000.jpg").unlink()
    assert fix_dataset(data, fixed, overwrite=True).images_written == 11  # an earlier result is replaced
    assert not (fixed / "synth_000000.jpg").exists()


# ------------------------------------------------------------------------------------------------
# Finding 11: the decode cache is optional

def test_an_unusable_cache_dir_warns_and_trains_uncached(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "data")
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    result = _train(data, tmp_path / "runs", cache_dir=str(blocker / "cache"))  # cannot be created
    warnings = [e["message"] for e in read_events(result.run_dir / "events.jsonl") if e["event"] == "RunWarning"]
    assert len(warnings) == 1 and "decode cache" in warnings[0] and "not_a_folder" in warnings[0]
    assert result.epochs_done == 1

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(dataset_module.np, "savez", read_only)
    result = _train(data, tmp_path / "runs2", cache_dir=str(tmp_path / "cache"))
    warnings = [e["message"] for e in read_events(result.run_dir / "events.jsonl") if e["event"] == "RunWarning"]
    assert len(warnings) == 1 and "read-only file system" in warnings[0]
    assert result.epochs_done == 1


def test_a_run_dir_whose_name_is_not_utf8_gets_its_renders(tmp_path):
    """Validation renders used cv2.imwrite, which crashes the process (SIGSEGV) on such a path; a
    subprocess, so that a regression fails the test instead of killing pytest."""
    data = tmp_path / "data"
    write_synthetic_dataset(data, n=12, seed=0)
    runs = Path(os.fsdecode(os.fsencode(str(tmp_path)) + b"/runs_\x82\xa0"))
    proc = _cli(["train", "--image-dir", data, "--runs-dir", runs, "--exp-name", "r", "--epochs", "1",
                 "--eval-interval", "1", "--cnn-width", "8", "--batch-size", "4", "--num-workers", "0",
                 "--no-tui", "--device", "cpu"])
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert list((runs / "r").glob("*/val_00.png")), sorted(p.name for p in (runs / "r").iterdir())
    assert "no TensorBoard scalars for this run" in (runs / "r" / "train.log").read_text(encoding="utf-8")
