"""Checkpoints never run code, say when they are too new, and are replaced atomically."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uhd_core.checkpoint import CHECKPOINT_FORMAT, atomic_write_bytes, load_checkpoint, save_checkpoint
from uhd_core.errors import CheckpointError


class _CreatesFileWhenUnpickled:
    """Unpickling calls open(path, "w"): the least harmful stand-in for code an attacker would run."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _malicious_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": {}, "model": {}, "payload": _CreatesFileWhenUnpickled(marker)}, path)
    assert not marker.exists()
    return path, marker


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    path, marker = _malicious_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="cannot be loaded safely"):
        load_checkpoint(path)
    assert not marker.exists()
    # the control: unpickling it fully really would have created the file
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("command", [
    ["export", "{ckpt}"], ["eval", "{ckpt}", "--image-dir", "{data}"],
    ["predict", "{ckpt}", "--source", "{data}", "--out", "{tmp}/pred"],
    ["train", "--ckpt", "{ckpt}", "--image-dir", "{data}", "--runs-dir", "{tmp}/runs"],
    ["train", "--resume", "{ckpt}", "--runs-dir", "{tmp}/runs"],
    ["train", "--teacher-ckpt", "{ckpt}", "--arch", "transformer", "--image-dir", "{data}", "--runs-dir", "{tmp}/runs"],
])
def test_every_command_refuses_the_malicious_checkpoint(tmp_path, tiny_yolo_dir, command):
    """(`uhd bench` reads ONNX files only, which hold no pickles.)"""
    path, marker = _malicious_checkpoint(tmp_path)
    args = [a.format(ckpt=path, data=tiny_yolo_dir, tmp=tmp_path) for a in command]
    proc = subprocess.run([sys.executable, "-m", "uhd_cli", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot be loaded safely" in lines[0], proc.stderr
    assert not marker.exists()


def test_a_newer_checkpoint_format_is_a_clear_error(tmp_path):
    path = tmp_path / "future.pt"
    save_checkpoint(path, {"config": {}, "model": {}})
    ckpt = torch.load(path, weights_only=True)
    torch.save({**ckpt, "format": CHECKPOINT_FORMAT + 1}, path)
    with pytest.raises(CheckpointError, match=f"format {CHECKPOINT_FORMAT + 1}.*upgrade"):
        load_checkpoint(path)


def test_a_write_that_fails_midway_leaves_the_old_file(tmp_path):
    target = tmp_path / "last_0001.pt"
    target.write_bytes(b"old complete file")

    def half_then_fail(fh) -> None:
        fh.write(b"new but ")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write_bytes(target, half_then_fail)
    assert target.read_bytes() == b"old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["last_0001.pt"]  # no temp file left behind


def test_kill_9_during_a_write_leaves_the_old_file(tmp_path):
    """A process SIGKILLed in the middle of writing (half the bytes on disk) never tears the target."""
    target = tmp_path / "last_0001.pt"
    target.write_bytes(b"old complete file")
    writer = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from uhd_core.checkpoint import atomic_write_bytes\n"
        "def slow(fh):\n"
        "    fh.write(b'x' * 4096); fh.flush(); print('half', flush=True); time.sleep(60); fh.write(b'y')\n"
        f"atomic_write_bytes(Path({str(target)!r}), slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "half"
    proc.kill()
    proc.wait(timeout=30)
    assert target.read_bytes() == b"old complete file"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert len(leftovers) == 1 and leftovers[0].name.endswith(".tmp")  # what resume cleans up
