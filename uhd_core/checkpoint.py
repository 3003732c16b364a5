"""Checkpoints: tensors and plain data only, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from uhd_core.errors import CheckpointError, first_line
# Re-exported: the atomic writers live with the other output rules (uhd_core/outputs.py).
from uhd_core.outputs import atomic_write_bytes, atomic_write_text  # noqa: F401

CHECKPOINT_FORMAT = 1


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    from uhd_core import __version__

    full = {"format": CHECKPOINT_FORMAT, "uhd_version": __version__, **payload}
    atomic_write_bytes(path, lambda fh: torch.save(full, fh))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message suggests weights_only=False; never do that for a file from someone else.
        refused = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        what = f" ({refused.group(1)})" if refused else ""
        raise CheckpointError(
            f"{path} cannot be loaded safely: it holds pickled Python objects{what} beyond tensors and plain data, "
            "and unpickling them could run arbitrary code. UHD never writes such files; if you trust its source, "
            "load it in Python yourself and re-save only its state_dicts"
        ) from None
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise CheckpointError(
            f"{path} cannot be loaded safely as a checkpoint (truncated or not a torch file?): {first_line(exc)[:200]}"
        ) from None
    if not isinstance(ckpt, dict) or "format" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"{path} is not a UHD checkpoint (no format/config)")
    if not isinstance(ckpt["format"], int) or ckpt["format"] > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {ckpt['format']!r}; this UHD reads formats <= {CHECKPOINT_FORMAT} "
            "(upgrade uhd)"
        )
    return ckpt


def prune_checkpoints(run_dir: Path, pattern: str, keep: int) -> list[Path]:
    """Delete all but the newest `keep` files matching pattern (by name order: names carry the epoch)."""
    files = sorted(run_dir.glob(pattern))
    removed = files[:-keep] if keep > 0 else files
    for f in removed:
        f.unlink(missing_ok=True)
    return removed
