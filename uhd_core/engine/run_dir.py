"""The run dir: where it is, claiming it (lock, refusals, free space) before any work, undoing a refused claim."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from uhd_core.config import RunConfig
from uhd_core.engine.run_lock import RunDirLock
from uhd_core.errors import RunDirError, bounded
from uhd_core.outputs import describe_os_error

#: Free disk space required before training: this many checkpoints (a best and a last, plus the temp
#: file of the next save) of the model's estimated size.
CHECKPOINTS_OF_HEADROOM = 3


def run_dir_path(cfg: RunConfig, resume_path: Path | None) -> Path:
    """The resumed checkpoint's folder, else --runs-dir/--exp-name (exp_name is one folder name, RunConfig)."""
    if resume_path is not None:
        return resume_path.resolve().parent
    return Path(cfg.runs_dir) / cfg.exp_name


def require_writable_dir(run_dir: Path) -> None:
    """Create ``run_dir`` and prove a file can be written there, before any work is done."""
    probe = run_dir / f".write_probe.{os.getpid()}"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise not_writable(run_dir, exc) from None


def not_writable(run_dir: Path, exc: OSError) -> RunDirError:
    """'run dir X is not writable: <what happened and what to do>' (a full disk says so, not just errno)."""
    line = describe_os_error(exc, run_dir)
    prefix = f"cannot write {bounded(run_dir)}: "
    advice = line[len(prefix):] if line.startswith(prefix) else line
    return RunDirError(f"run dir {bounded(run_dir)} is not writable: {advice} (or choose another --runs-dir)")


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and those of its parents that do not exist yet, deepest first (what mkdir -p creates)."""
    missing = []
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            break
        missing.append(candidate)
    return missing


def remove_empty_dirs(dirs: list[Path]) -> None:
    """rmdir each of ``dirs`` (deepest first) that is still empty: undo a refused run's mkdir -p."""
    for folder in dirs:
        try:
            folder.rmdir()
        except OSError:
            return  # not empty (someone else wrote there) or gone: leave it and its parents


def estimated_checkpoint_bytes(model: torch.nn.Module, with_ema: bool) -> int:
    """Model + AdamW's two moments (+ EMA copy) in the parameters' dtype, plus a little for the rest."""
    tensor_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return tensor_bytes * (3 + int(with_ema)) + 64 * 1024


def require_free_space(run_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise RunDirError(f"only {free / 1e6:.1f} MB free under {run_dir}; checkpoints of this model need about "
                          f"{needed / 1e6:.1f} MB (free some space or choose another --runs-dir)")


def refuse_existing_checkpoints(run_dir: Path, cfg: RunConfig, resuming: bool) -> None:
    if not resuming and not cfg.exist_ok and run_dir.is_dir() and any(run_dir.glob("*.pt")):
        raise RunDirError(
            f"{run_dir} already holds checkpoints; use --resume {run_dir}, a new --exp-name, or --exist-ok"
        )


def claim_run_dir(run_dir: Path, cfg: RunConfig, resuming: bool, checkpoint_bytes: int) -> RunDirLock:
    """Create and lock the run dir, then refuse it if it cannot hold this run. A refusal releases the
    lock and removes the folders this call created, so it leaves nothing behind (a rerun is never
    refused because of an earlier refused one). Returns the held lock."""
    created = missing_dirs(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        remove_empty_dirs(created)
        raise not_writable(run_dir, exc) from None
    lock: RunDirLock | None = None
    try:
        # First the lock: a run still training there (or a resume of it) is refused before anything,
        # even the checks below, touches its files.
        lock = RunDirLock(run_dir).acquire()
        refuse_existing_checkpoints(run_dir, cfg, resuming)
        if resuming:
            # Temp files of saves cut short by a crash (kill -9 mid-write); the checkpoints themselves
            # were only ever renamed into place complete. Safe now: nobody else holds the run dir.
            for stale in run_dir.glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        require_writable_dir(run_dir)
        require_free_space(run_dir, CHECKPOINTS_OF_HEADROOM * checkpoint_bytes)
    except BaseException:
        if lock is not None:
            lock.release()
        remove_empty_dirs(created)
        raise
    return lock

