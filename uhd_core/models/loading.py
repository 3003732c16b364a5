"""One way from a checkpoint file to a built detector: file -> config -> weights -> build -> load.

``load_detector(path)`` is the whole path in one call (as timm's ``create_model(checkpoint_path=)``
sits on one ``load_checkpoint``). Its steps are public for the callers that must act between reading
the file and building the model: ``uhd export`` refuses a bad output path after the checkpoint was
read and before any work, the query distiller checks the teacher's family and classes. Everything
here reads the file through ``uhd_core.checkpoint.load_checkpoint`` (``weights_only=True``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from uhd_core.checkpoint import load_checkpoint
from uhd_core.config import RunConfig, build_config, stored_config
from uhd_core.errors import CheckpointError, ConfigError, UhdError, first_line
from uhd_core.models.detector import Detector, build_detector

#: Config fields a loaded model never acts on: it resumes nothing and is initialised from nothing else.
CLEARED_ON_LOAD = ("resume", "ckpt")


def checkpoint_config(ckpt: dict[str, Any], overrides: dict[str, Any] | None = None, *,
                      clear: Iterable[str] = CLEARED_ON_LOAD) -> RunConfig:
    """The RunConfig stored in ``ckpt`` (fields later versions removed are dropped), the ``clear``
    fields emptied, ``overrides`` on top. A stored config this UHD cannot read is a ConfigError."""
    base = {**stored_config(ckpt["config"]), **{name: "" for name in clear}}
    return build_config(None, overrides, base=base)


def checkpoint_weights(ckpt: dict[str, Any], path: str | Path, use_ema: bool | None = None
                       ) -> tuple[dict[str, torch.Tensor], bool]:
    """(state_dict, used_ema): ``use_ema`` None = the EMA weights when the checkpoint has them.
    Asking for EMA weights a checkpoint does not hold is a ConfigError (``--use-ema``)."""
    has_ema = bool(ckpt.get("ema"))
    if use_ema and not has_ema:
        raise ConfigError(f"--use-ema: {path} holds no EMA weights (trained without --use-ema)")
    used_ema = has_ema if use_ema is None else use_ema
    return (ckpt["ema"]["module"] if used_ema else ckpt["model"]), used_ema


def weights_do_not_fit(label: str, hint: str = "") -> Callable[[Exception], UhdError]:
    """The usual build/load failure: ``"<label>: weights do not fit the stored config<hint> (<why>)"``."""
    return lambda exc: CheckpointError(f"{label}: weights do not fit the stored config{hint} ({first_line(exc)})")


def build_with_weights(cfg: RunConfig, state: dict[str, torch.Tensor],
                       on_error: Callable[[Exception], UhdError]) -> Detector:
    """``build_detector(cfg)`` with ``state`` loaded strictly, in eval mode. A config that does not
    build (ValueError) or weights of other shapes/names (RuntimeError) raise ``on_error(exc)``."""
    try:
        model = build_detector(cfg)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise on_error(exc) from None
    return model.eval()


def load_detector(path: str | Path, use_ema: bool | None = None, *, overrides: dict[str, Any] | None = None
                  ) -> tuple[Detector, RunConfig]:
    """A UHD checkpoint -> (detector in eval mode, its RunConfig with ``overrides`` on top).

    ``use_ema`` None = the EMA weights when the checkpoint has them. Every failure is one UhdError line:
    a missing/unsafe/foreign file (CheckpointError), EMA asked of a checkpoint without (ConfigError),
    weights that do not fit the config (CheckpointError).
    """
    ckpt = load_checkpoint(path)
    cfg = checkpoint_config(ckpt, overrides)
    state, _ = checkpoint_weights(ckpt, path, use_ema)
    return build_with_weights(cfg, state, weights_do_not_fit(str(path))), cfg
