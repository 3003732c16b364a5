"""What a run starts from, decided once before it: the config (checkpoint < preset < typed flags), the
--resume checkpoint (read once and passed down), the device, and --ckpt's weights and their fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from uhd_core.config import RunConfig, build_config, stored_config
from uhd_core.engine.saving import load_resume_checkpoint
from uhd_core.errors import CheckpointError, ConfigError, UhdError


@dataclass(frozen=True)
class RunSetup:
    """The config of a run and, when resuming, its checkpoint (already read) and path."""

    cfg: RunConfig
    resume_checkpoint: dict[str, Any] | None = None
    resume_path: Path | None = None


def prepare_run(preset: str | None, overrides: dict[str, Any]) -> RunSetup:
    """Config for `uhd train`: checkpoint config (when resuming) < preset < typed flags. A --resume
    checkpoint is read here once; the trainer continues from this copy."""
    resume = overrides.get("resume") or ""
    if not resume and preset:
        resume = build_config(preset).resume
    if not resume:
        return RunSetup(build_config(preset, overrides))
    path, ckpt = load_resume_checkpoint(resume)
    # The stored --ckpt only initialised that run; resuming continues from the resume checkpoint.
    base = {**stored_config(ckpt["config"]), "ckpt": "", "ckpt_non_strict": False}
    return RunSetup(build_config(preset, {**overrides, "resume": str(path)}, base=base), ckpt, path)


def make_run_config(preset: str | None, overrides: dict[str, Any]) -> tuple[RunConfig, dict[str, Any] | None, Path | None]:
    """prepare_run as a tuple: (config, the resume checkpoint or None, its path or None)."""
    setup = prepare_run(preset, overrides)
    return setup.cfg, setup.resume_checkpoint, setup.resume_path


def preset_epochs(cfg: RunConfig) -> int:
    """--epochs of the preset this run was built from (RunConfig's default without one, or when the
    preset cannot be read any more)."""
    default = int(RunConfig.model_fields["epochs"].default)
    if not cfg.preset:
        return default
    try:
        return build_config(cfg.preset).epochs
    except UhdError:
        return default


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device (use cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available (use --device cpu)")
    return device


def initial_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What --ckpt copies from a checkpoint: its EMA weights when it has them, else the model's."""
    return ckpt["ema"]["module"] if ckpt.get("ema") else ckpt["model"]


def compare_state_dicts(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
                        ) -> tuple[list[str], list[str], list[str]]:
    """(missing from ``state``, unexpected in it, "name: checkpoint (shape) vs model (shape)") for ``own``."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    return missing, unexpected, mismatched


def require_exact_fit(path: str, missing: list[str], unexpected: list[str], mismatched: list[str]) -> None:
    """Without --ckpt-non-strict, any difference is an error listing (the first of) each kind."""
    parts = [f"{title} {len(names)} ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''})"
             for title, names in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched))
             if names]
    if parts:
        raise CheckpointError(f"--ckpt {path} does not match this model: {'; '.join(parts)}; "
                              "use --ckpt-non-strict to load the matching tensors only")
