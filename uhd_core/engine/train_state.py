"""What the training loop carries from step to step (TrainState), how it starts, how --resume restores
it, and what a run returns (RunResult)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from uhd_core.config import RunConfig
from uhd_core.distill.base import Distiller
from uhd_core.engine.distributed import DistContext
from uhd_core.engine.ema import ModelEMA
from uhd_core.engine.finite import FiniteWatch
from uhd_core.errors import ConfigError
from uhd_core.models.detector import Detector

#: The cosine schedule ends at this fraction of --lr rather than 0, so the last epochs still learn.
FINAL_LR_FRACTION = 0.01


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    best_map50: float
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    epochs_done: int
    stopped_early: bool
    #: The signal (SIGINT/SIGTERM number) that stopped the run gracefully; 0 when none did.
    stop_signal: int = 0
    #: False when no evaluation ran (stopped in the first epochs, or no val split): best_map50 is 0 then.
    evaluated: bool = True
    #: The epochs this run's preset asks for (RunConfig's default without a preset): what a run that
    #: ended at mAP 0 after far fewer epochs should try.
    preset_epochs: int = 0
    preset: str = ""
    image_dir: str = ""


def cosine_lr_lambda(total_steps: int):
    def factor(step: int) -> float:
        progress = min(step / max(1, total_steps), 1.0)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class ForwardWithFeatures(torch.nn.Module):
    """Detector.forward_with_features as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.detector.forward_with_features(images)


@dataclass
class TrainState:
    """Everything the loop reads and changes. ``model`` is the plain Detector (EMA, eval and checkpoints
    use it, so no "module." prefixes); ``forward`` is the step's forward, through DDP when distributed."""

    #: the run's config, decided once before the model was built (a head's prepare_config may have
    #: filled in values, e.g. fitted anchors); what config.yaml and every checkpoint store
    cfg: RunConfig
    model: Detector
    forward: Callable[[torch.Tensor], tuple[dict[str, torch.Tensor], torch.Tensor]]
    #: the model's parameters plus a distiller's trainable parts (e.g. a feature adapter)
    trained: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    distiller: Distiller | None
    #: autocast dtype of --use-amp (fp16 on CUDA, bf16 on CPU); None without it
    amp_dtype: torch.dtype | None
    steps_per_epoch: int
    total_steps: int
    watch: FiniteWatch
    start_epoch: int = 1
    global_step: int = 0
    best_map: float = -1.0  # -1 until an evaluation ran (here or in the run this one resumes)
    best_path: Path | None = None
    last_path: Path | None = None
    epochs_done: int = 0
    consecutive_nonfinite: int = 0
    stopped: bool = False


def new_train_state(cfg: RunConfig, model: Detector, distiller: Distiller | None, device: torch.device,
                    dist: DistContext, steps_per_epoch: int) -> TrainState:
    """Optimizer, schedule, scaler and EMA for ``model`` (already on ``device``), from step 0."""
    forward = model.forward_with_features
    if dist.enabled:  # DDP's hooks average the gradients
        forward = DistributedDataParallel(
            ForwardWithFeatures(model), device_ids=[device.index] if device.type == "cuda" else None)
    trained = list(model.parameters()) + (distiller.trainable_parameters() if distiller is not None else [])
    optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr_lambda(cfg.epochs * steps_per_epoch))
    use_fp16 = cfg.use_amp and device.type == "cuda"
    amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if cfg.use_amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
    ema = ModelEMA(model, cfg.ema_decay) if cfg.use_ema else None  # updated on every rank: identical copies
    # Not the EMA copy: it averages weights this check saw finite, and copies their buffers, so it is
    # finite too (and the save checks it); leaving it out halves the cost (~1% of a step, not ~2%).
    watch = FiniteWatch([
        *model.named_parameters(), *model.named_buffers(),
        *((f"distiller.{i}", t) for i, t in enumerate(distiller.trainable_parameters() if distiller else ())),
    ])
    return TrainState(cfg, model, forward, trained, optimizer, scheduler, scaler, ema, distiller, amp_dtype,
                      steps_per_epoch, max(1, cfg.epochs * steps_per_epoch), watch)


def restore_train_state(state: TrainState, ck: dict[str, Any], cfg: RunConfig, device: torch.device,
                        resume_path: Path | None) -> int:
    """Continue from a --resume checkpoint (read once, before the run): weights, optimizer, schedule,
    scaler, EMA, distiller, RNG, counters. Returns the world size that trained it."""
    state.model.load_state_dict(ck["model"])
    state.optimizer.load_state_dict(ck["optimizer"])
    state.scheduler.load_state_dict(ck["scheduler"])
    # LambdaLR's state keeps the old lambda's last factor; recompute it for the (maybe longer) schedule.
    state.scheduler.lr_lambdas = [cosine_lr_lambda(cfg.epochs * state.steps_per_epoch)]
    if ck.get("scaler"):
        state.scaler.load_state_dict(ck["scaler"])
    if state.ema is not None and ck.get("ema"):
        state.ema.load_state_dict(ck["ema"])
    if state.distiller is not None and ck.get("distiller"):
        state.distiller.load_student_side_state_dict(ck["distiller"])
    torch.set_rng_state(ck["rng"]["torch"])
    if device.type == "cuda" and ck["rng"].get("cuda"):
        torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
    state.start_epoch = int(ck["epoch"]) + 1
    state.epochs_done = state.start_epoch - 1
    state.global_step = int(ck["global_step"])
    state.best_map = float(ck.get("best_map50", -1.0))
    state.best_path = Path(ck["best_checkpoint"]) if ck.get("best_checkpoint") else None
    if state.start_epoch > cfg.epochs:
        raise ConfigError(
            f"{resume_path} already finished epoch {ck['epoch']} of {cfg.epochs}; "
            "pass a larger --epochs to extend training"
        )
    return int(ck.get("world_size", 1))
