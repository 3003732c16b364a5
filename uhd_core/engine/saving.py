"""Checkpoints of a run: their names, what --resume may continue from, writing one (never a non-finite
one) and pruning the old ones after it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from uhd_core.checkpoint import load_checkpoint, prune_checkpoints, save_checkpoint
from uhd_core.config import RunConfig
from uhd_core.engine.distributed import DistContext
from uhd_core.engine.events import CheckpointSaved, EventBus
from uhd_core.engine.finite import divergence_causes, name_list, nonfinite_entries
from uhd_core.engine.train_state import TrainState
from uhd_core.errors import CheckpointError, TrainingError, bounded, first_line

KEEP_CHECKPOINTS = 10

#: Checkpoint names the trainer writes, each with the number of the last epoch it finished
#: (best/last: the epoch in the name; manual_E_step_S: saved during epoch E, so E - 1 finished).
_RESUMABLE_NAMES = (
    (re.compile(r"last_(\d+)\.pt"), 0, 2),
    (re.compile(r"best_.+_(\d+)_map_[\d.]+\.pt"), 0, 1),
    (re.compile(r"manual_(\d+)_step_\d+\.pt"), -1, 0),
)


def _resume_order(path: Path) -> tuple[int, int] | None:
    """(finished epoch, preference) of a checkpoint name the trainer writes; None for other files.
    At the same epoch a last_ beats a best_ (saved after it) beats a manual_."""
    for pattern, offset, preference in _RESUMABLE_NAMES:
        match = pattern.fullmatch(path.name)
        if match:
            return int(match.group(1)) + offset, preference
    return None


def resumable_checkpoints(run_dir: Path) -> list[Path]:
    """The checkpoints of a run dir that --resume may continue from, newest first."""
    named = [(order, p) for p in Path(run_dir).glob("*.pt") if (order := _resume_order(p)) is not None]
    return [p for _, p in sorted(named, key=lambda item: (item[0], item[1].name), reverse=True)]


def load_resume_checkpoint(path: str) -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint) of --resume, read once. A file, or a run dir meaning its newest loadable
    checkpoint: last_*.pt, else best_*.pt or manual_*.pt (a run whose disk filled up may hold only a
    best_ one; every kind holds the full training state)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in resumable_checkpoints(p):
            try:
                return candidate, load_checkpoint(candidate)
            except CheckpointError:
                continue
        raise CheckpointError(f"--resume {bounded(p)}: no loadable checkpoint (last_*.pt, best_*.pt or manual_*.pt) "
                              "in that folder")
    if not p.is_file():
        raise CheckpointError(f"--resume {bounded(p)}: no such checkpoint")
    return p, load_checkpoint(p)


def find_resume_checkpoint(path: str) -> Path:
    """The file load_resume_checkpoint would continue from."""
    return load_resume_checkpoint(path)[0]


def how_to_go_on(run_dir: Path) -> str:
    """After a failed write: how to continue once the disk has room (resume needs a checkpoint)."""
    resumable = resumable_checkpoints(run_dir) if run_dir.is_dir() else []
    if resumable:
        return f"the checkpoints there are kept: free some space, then uhd train --resume {bounded(run_dir)}"
    return "no checkpoint was written yet: free some space, then run the same command again"


def checkpoint_path(run_dir: Path, cfg: RunConfig, kind: str, epoch: int, map50: float = 0.0,
                    step: int = 0) -> tuple[Path, str]:
    """(file name to write, glob of its kind to prune) for kind "best" | "last" | "manual"."""
    if kind == "best":
        return run_dir / f"best_{cfg.arch}_{epoch:04d}_map_{map50:.5f}.pt", f"best_{cfg.arch}_*.pt"
    if kind == "manual":
        return run_dir / f"manual_{epoch + 1:04d}_step_{step:05d}.pt", "manual_*.pt"
    return run_dir / f"last_{epoch:04d}.pt", "last_*.pt"


def checkpoint_payload(state: TrainState, cfg: RunConfig, epoch: int, path: Path, kind: str,
                       world_size: int) -> dict[str, Any]:
    """What a checkpoint holds: the full training state (every kind can be resumed from)."""
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and next(state.model.parameters()).is_cuda:
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "config": cfg.model_dump(mode="json"),
        "model": state.model.state_dict(),
        "ema": state.ema.state_dict() if state.ema is not None else None,
        # a distiller's trained parts (e.g. a feature adapter) for resume; never the teacher, never exported
        "distiller": state.distiller.student_side_state_dict() if state.distiller is not None else None,
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler.is_enabled() else None,
        "epoch": epoch,
        "global_step": state.global_step,
        "best_map50": state.best_map,
        # a best checkpoint names itself; a last one names the best so far
        "best_checkpoint": str(path if kind == "best" else state.best_path or ""),
        "rng": rng,
        "world_size": world_size,  # processes that trained it (resume warns when that changes)
    }


def save_train_state(state: TrainState, kind: str, *, cfg: RunConfig, run_dir: Path, dist: DistContext,
                     bus: EventBus, epoch: int, map50: float = 0.0, step: int = 0) -> Path:
    """Write checkpoint ``kind`` ("best" | "last" | "manual": asked for mid-epoch with request_save;
    ``epoch`` is then the last finished epoch, so resuming from it redoes the current one). Rank 0
    writes (every rank holds the same weights); returns the path either way."""
    path, pattern = checkpoint_path(run_dir, cfg, kind, epoch, map50, step)
    if not dist.is_main:
        return path
    payload = checkpoint_payload(state, cfg, epoch, path, kind, dist.world_size)
    # The last line of defence: whatever produced them, non-finite weights are never written (a NaN
    # checkpoint exports and evaluates as if it were a model).
    bad = nonfinite_entries({k: payload[k] for k in ("model", "ema", "distiller", "optimizer")})
    if bad:
        raise TrainingError(
            f"refusing to write checkpoint {path}: NaN/inf in {name_list(bad)}; the previous checkpoints in "
            f"{run_dir} are kept. {divergence_causes(cfg)}")
    try:
        save_checkpoint(path, payload)
    except OSError as exc:
        # The previous checkpoints are untouched: the write went to a temp file, pruning comes after.
        raise TrainingError(f"could not write checkpoint {path}: {exc.strerror or first_line(exc)}; "
                            f"{how_to_go_on(run_dir)}") from None
    # Pruning only after the new file is safely in place: a crash never leaves fewer checkpoints.
    prune_checkpoints(run_dir, pattern, KEEP_CHECKPOINTS)
    bus.emit(CheckpointSaved(epoch, str(path), kind))
    return path
