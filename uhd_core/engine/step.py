"""One training step (forward, losses, the non-finite guards, backward, update) and the running sums an
epoch reports from."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uhd_core.config import RunConfig
from uhd_core.data.dataset import images_to_input
from uhd_core.distill.base import cosine_ramp
from uhd_core.engine.distributed import DistContext
from uhd_core.engine.events import EpochEnded, EventBus, StepEnded
from uhd_core.engine.finite import FiniteWatch, divergence_causes, name_list
from uhd_core.engine.train_state import TrainState
from uhd_core.errors import TrainingError


@dataclass(frozen=True)
class StepOutcome:
    #: the step's named loss terms (detached later), None when it was skipped for a non-finite loss
    losses: dict[str, torch.Tensor] | None
    images: int
    #: decided by every rank together (one all-reduce): stop after this step / save a manual checkpoint
    stop: bool
    save: bool


def step_losses(state: TrainState, cfg: RunConfig, batch: Any, device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """Forward under autocast, the head's loss, plus the distiller's terms -> (named terms with "loss", images)."""
    x = images_to_input(batch.images, device)
    boxes = batch.boxes.to(device, non_blocking=True)
    labels = batch.labels.to(device, non_blocking=True)
    amp = state.amp_dtype
    head = state.model.head
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        outputs, features = state.forward(x)
    losses = head.loss(outputs, head.build_targets(boxes, labels, head.output_hw(outputs)))
    if state.distiller is not None:
        teacher_x = x if batch.teacher_images is None else images_to_input(batch.teacher_images, device)
        scale = cosine_ramp(state.global_step / state.total_steps) if cfg.distill_cosine else 1.0
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            distill_loss, distill_terms = state.distiller(outputs, features, teacher_x, scale)
        losses = {**losses, **distill_terms, "loss": losses["loss"] + distill_loss}
    return losses, int(x.shape[0])


def run_step(state: TrainState, cfg: RunConfig, batch: Any, device: torch.device, dist: DistContext,
             requested: tuple[bool, bool], where: tuple[int, int]) -> StepOutcome:
    """One step at ``where`` = (epoch, step); ``requested`` = (stop, save) as this rank sees them now."""
    losses, images = step_losses(state, cfg, batch, device)
    loss = losses["loss"]
    # In a DDP job every rank must skip, save and stop at the same step (a rank that skipped the backward
    # would leave the others waiting in its all-reduce): one tiny all-reduce, and this step's decisions
    # use its result only, never a flag a signal may set meanwhile.
    nonfinite, stop, save = dist.all_max([float(not torch.isfinite(loss)), float(requested[0]), float(requested[1])])
    if nonfinite:
        # Skip the update (weights, EMA, schedule untouched) instead of poisoning the weights; a streak
        # of them means training diverged, and the last good checkpoint stays as is.
        state.consecutive_nonfinite += 1
        if state.consecutive_nonfinite >= cfg.max_nonfinite_steps:
            raise TrainingError(
                f"{state.consecutive_nonfinite} consecutive steps had a non-finite loss (last {loss.item()} at "
                f"epoch {where[0]} step {where[1]}); stopped. {divergence_causes(cfg)}. The last good "
                f"checkpoint is {state.last_path or 'none (no epoch finished)'}"
            )
        # The forward of a skipped step still updated the BatchNorm statistics.
        require_finite_state(state.watch, dist, cfg, where, state.last_path)
        return StepOutcome(None, images, bool(stop), bool(save))
    state.consecutive_nonfinite = 0
    _update(state, cfg, loss, dist)
    # Before anything uses or saves them: weights that went non-finite stop the run here.
    require_finite_state(state.watch, dist, cfg, where, state.last_path)
    return StepOutcome(losses, images, bool(stop), bool(save))


def _update(state: TrainState, cfg: RunConfig, loss: torch.Tensor, dist: DistContext) -> None:
    """Backward, (clip,) optimizer and schedule step, EMA; counts the step."""
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if state.distiller is not None:
        dist.average_gradients(state.distiller.trainable_parameters())  # not inside the DDP module
    if cfg.grad_clip_norm > 0:
        state.scaler.unscale_(state.optimizer)
        torch.nn.utils.clip_grad_norm_(state.trained, cfg.grad_clip_norm)
    state.scaler.step(state.optimizer)
    state.scaler.update()
    state.scheduler.step()
    if state.ema is not None:
        state.ema.update(state.model)
    state.global_step += 1


def require_finite_state(watch: FiniteWatch, dist: DistContext, cfg: RunConfig, where: tuple[int, int],
                         last_path: Path | None) -> None:
    """TrainingError when a weight, buffer or distiller tensor holds NaN/inf (decided by every rank together)."""
    finite = watch.all_finite()
    if dist.enabled:  # BatchNorm statistics are per rank: a rank alone must not stop
        finite = not dist.all_max([float(not finite)])[0]
    if finite:
        return
    bad = watch.bad_names()
    raise TrainingError(
        f"epoch {where[0]} step {where[1]} made the weights non-finite (NaN/inf in {len(bad) or 'some'} of "
        f"{len(watch.tensors)} tensors{': ' + name_list(bad) if bad else ' on another process'}); stopped, and "
        f"they were not saved. {divergence_causes(cfg)}. The last good checkpoint is "
        f"{last_path or 'none (no epoch finished)'}")


@dataclass
class EpochMeter:
    """Loss sums of an epoch (EpochEnded) and of the current log window (StepEnded)."""

    epoch: int
    steps_per_epoch: int
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    window: dict[str, torch.Tensor] = field(default_factory=dict)
    window_steps: int = 0
    window_imgs: int = 0
    epoch_imgs: int = 0
    counted_steps: int = 0
    skipped_steps: int = 0
    t_epoch: float = field(default_factory=time.perf_counter)
    t_window: float = 0.0

    def __post_init__(self) -> None:
        self.t_window = self.t_epoch

    def add(self, outcome: StepOutcome) -> None:
        if outcome.losses is None:
            self.skipped_steps += 1
            return
        self.counted_steps += 1
        self.window_imgs += outcome.images
        self.epoch_imgs += outcome.images
        self.window_steps += 1
        for name, value in outcome.losses.items():
            v = value.detach()
            self.sums[name] = self.sums.get(name, 0) + v
            self.window[name] = self.window.get(name, 0) + v

    def emit_window(self, bus: EventBus, step: int, global_step: int, lr: float) -> None:
        now = time.perf_counter()
        bus.emit(StepEnded(
            epoch=self.epoch, step=step, steps_per_epoch=self.steps_per_epoch, global_step=global_step,
            losses={k: float(v) / self.window_steps for k, v in self.window.items()},
            lr=lr, imgs_per_s=self.window_imgs / max(now - self.t_window, 1e-9),
        ))
        self.window, self.window_steps, self.window_imgs, self.t_window = {}, 0, 0, now

    def emit_epoch(self, bus: EventBus, steps_done: int) -> None:
        seconds = time.perf_counter() - self.t_epoch
        bus.emit(EpochEnded(self.epoch, {k: float(v) / max(self.counted_steps, 1) for k, v in self.sums.items()},
                            seconds, self.epoch_imgs / max(seconds, 1e-9), self.skipped_steps, steps_done=steps_done,
                            steps_per_epoch=self.steps_per_epoch))
