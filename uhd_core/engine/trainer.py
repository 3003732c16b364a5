"""The training loop: short, explicit, and silent except for the events it emits.

Trainer.__init__ makes every check a run can be refused for (docs/RELIABILITY.md section 2) before any
run dir, log or event file exists; run() then reads the data, builds the state and trains:
setup -> restore (--resume) -> per epoch: train (run_step per batch), evaluate, checkpoint.
"""

from __future__ import annotations

import errno
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from uhd_core.augment.pipeline import load_augment_pipeline
from uhd_core.checkpoint import atomic_write_text, load_checkpoint
from uhd_core.config import RunConfig, check_implemented, config_to_yaml
from uhd_core.data.dataset import require_image_dir, scan_extra_train_dirs, scan_yolo_folder
from uhd_core.distill.base import Distiller
from uhd_core.distill.factory import build_distiller, check_teacher_files
from uhd_core.engine.cpu_threads import apply_intra_op_threads
from uhd_core.engine.data_prep import batches_surfacing_worker_errors, make_loaders, prepare_data
from uhd_core.engine.distributed import DistContext
from uhd_core.engine.events import EvalFinished, EventBus, RunFailed, RunFinished, RunStarted, RunWarning, WeightsLoaded
from uhd_core.engine.finite import name_list, nonfinite_entries
from uhd_core.engine.render import write_renders
from uhd_core.engine.run_dir import claim_run_dir, estimated_checkpoint_bytes, refuse_existing_checkpoints, run_dir_path
from uhd_core.engine.run_lock import RunDirLock
from uhd_core.engine.run_setup import (  # noqa: F401  (make_run_config, resolve_device: re-exported)
    compare_state_dicts,
    initial_weights,
    make_run_config,
    preset_epochs,
    require_exact_fit,
    resolve_device,
)
from uhd_core.engine.saving import how_to_go_on, resumable_checkpoints, save_train_state  # noqa: F401
from uhd_core.engine.step import EpochMeter, run_step
from uhd_core.engine.train_state import RunResult, TrainState, new_train_state, restore_train_state
from uhd_core.errors import CheckpointError, ConfigError, TrainingError, UhdError, bounded
from uhd_core.evaluation import evaluate_detector
from uhd_core.heads.base import HEADS
from uhd_core.models.detector import Detector, build_detector, count_parameters
from uhd_core.models.registry import BACKBONES
from uhd_core.outputs import describe_os_error

#: OS errors of a write that the user fixes on the disk (full, quota, read-only, permissions).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
NUM_RENDERS = 10


class Trainer:
    def __init__(self, cfg: RunConfig, bus: EventBus | None = None, *, resume_checkpoint: dict[str, Any] | None = None,
                 resume_path: Path | None = None, dist: DistContext | None = None) -> None:
        """``dist``: this process's place in a multi-process (DDP) job; None = a plain single process.
        ``resume_checkpoint``: the --resume checkpoint, already read (run_setup.prepare_run); run() continues from it."""
        check_implemented(cfg)
        self.cfg = cfg  # decided here, never reassigned (a head's prepare_config makes the run's own copy)
        self.head_cls = HEADS.get(cfg.head_name)
        # One model, built now with the seed: its shape is checked against --ckpt and sizes the
        # checkpoints; run() trains it unless the head's prepare_config changes the config.
        self._model, self._rng_after_build = self._build_seeded(self.head_cls.stand_in_config(cfg))
        # Everything a run can be refused for is checked here, before any run dir, log or event file
        # is made for a run that cannot start.
        self.index = scan_yolo_folder(require_image_dir(cfg.image_dir), cfg.classes, cfg.follow_symlinks)
        self.extra_indexes = scan_extra_train_dirs(cfg.extra_train_dirs, cfg.image_dir, cfg.classes, cfg.follow_symlinks)
        self.dist = dist or DistContext()
        self.device = self.dist.device(resolve_device(cfg.device))
        if cfg.sync_bn and (self.device.type != "cuda" or self.dist.world_size < 2):
            raise ConfigError("--sync-bn synchronises BatchNorm across CUDA processes: it needs a CUDA device and "
                              "--devices > 1 (torch's SyncBatchNorm has no CPU implementation)")
        load_augment_pipeline(cfg.aug_config)  # a bad op or value: ConfigError now, not in a worker
        self._initial_state = self._read_initial_weights(cfg, resume_checkpoint, resume_path)
        check_teacher_files(cfg)
        # The teacher loads here (a file of the wrong layout is refused now); its own RNG use (a feature
        # adapter's init) is forked off so that the model's init depends on the seed alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self._distiller: Distiller | None = build_distiller(cfg, self.device)
        self.bus = bus or EventBus()
        self.resume_checkpoint = resume_checkpoint
        self.resume_path = resume_path
        self._stop_requested = False
        self._save_requested = False
        self._lock: RunDirLock | None = None
        self.run_dir = run_dir_path(cfg, resume_path)
        if self.dist.is_main:  # rank 0 alone writes, so rank 0 alone locks the run dir
            self._lock = claim_run_dir(self.run_dir, cfg, resume_path is not None,
                                       estimated_checkpoint_bytes(self._model, cfg.use_ema))
        else:
            refuse_existing_checkpoints(self.run_dir, cfg, resume_path is not None)

    @staticmethod
    def _build_seeded(cfg: RunConfig) -> tuple[Detector, torch.Tensor]:
        """(the model as run() would build it after seeding, the RNG state after that build); the
        global RNG is left as it was. The architecture's own checks (e.g. --d-model vs --heads) raise here."""
        if cfg.arch not in BACKBONES:
            raise ConfigError(f"--arch {cfg.arch} is not implemented yet (available: {', '.join(BACKBONES.names())})")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            try:
                model = build_detector(cfg)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
            return model, torch.get_rng_state()

    def _read_initial_weights(self, cfg: RunConfig, resume_checkpoint: dict[str, Any] | None,
                              resume_path: Path | None) -> dict[str, torch.Tensor] | None:
        """--ckpt's weights, read once (unsafe or unknown-format files are refused now) and copied into the
        model by run(); both it and a --resume checkpoint must be finite, and --ckpt must fit (unless non-strict)."""
        if cfg.ckpt and not Path(cfg.ckpt).expanduser().is_file():
            raise CheckpointError(f"--ckpt {cfg.ckpt}: no such checkpoint file")
        initial = initial_weights(load_checkpoint(cfg.ckpt)) if cfg.ckpt else None
        # What an earlier UHD could save after a diverged step: refuse it rather than train on NaN.
        for path, weights in ((resume_path, resume_checkpoint and {"model": resume_checkpoint.get("model"),
                                                                    "ema": resume_checkpoint.get("ema")}),
                              (cfg.ckpt, initial)):
            bad = nonfinite_entries(weights) if weights else []
            if bad:
                raise CheckpointError(f"{bounded(path)} holds NaN/inf weights ({name_list(bad)}); start from an "
                                      "earlier checkpoint")
        if initial is not None and not cfg.ckpt_non_strict:
            require_exact_fit(cfg.ckpt, *compare_state_dicts(self._model.state_dict(), initial))
        return initial

    def close(self) -> None:
        """Release the run dir (its lock); idempotent. run() does it when it ends; process exit does it too."""
        if self._lock is not None:
            self._lock.release()

    # -- control from other threads (dashboard keys, signal handlers) ---------------------------
    def request_stop(self) -> None:
        """Finish the current step, save a last checkpoint, and return."""
        self._stop_requested = True

    def request_save(self) -> None:
        self._save_requested = True

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """Train; releases the run dir when done, however it ends."""
        apply_intra_op_threads(self.cfg.threads, self.device)
        try:
            return self._run()
        except UhdError as exc:
            self._emit_failure(RunFailed(str(exc)))
            raise
        except OSError as exc:
            if exc.errno not in WRITE_ERRNOS:
                self._emit_failure(RunFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
                raise
            # A full disk (or a run dir that became read-only) while writing logs, events, split.json or
            # renders: one line naming the run dir and what to do, not an "unexpected OSError".
            where = exc.filename or self.run_dir
            error = TrainingError(f"{describe_os_error(exc, where)} (run dir {bounded(self.run_dir)}); "
                                  f"{how_to_go_on(self.run_dir)}")
            self._emit_failure(RunFailed(str(error)))
            raise error from None
        except Exception as exc:
            self._emit_failure(RunFailed(f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            raise
        finally:
            self.close()

    def _emit_failure(self, event: RunFailed) -> None:
        """Tell the subscribers; a log file on a full disk must not hide the error being reported."""
        try:
            self.bus.emit(event)
        except OSError:
            pass

    def _run(self) -> RunResult:
        state, cfg = self._setup()
        t_run = time.perf_counter()
        for epoch in range(state.start_epoch, cfg.epochs + 1):
            if not self._train_epoch(state, epoch):
                break  # stopped mid-epoch: its last_ checkpoint is saved, resume redoes the epoch
            self._evaluate(state, epoch)
            state.last_path = self._save(state, "last", epoch)
            state.epochs_done = epoch
            # A stop asked for after the epoch's last step: decided together too (rank 0 may still have
            # been evaluating while the others waited here).
            state.stopped = bool(self.dist.all_max([float(self._stop_requested)])[0])
            if state.stopped:
                break
        return self._finish(state, time.perf_counter() - t_run)

    def _setup(self) -> tuple[TrainState, RunConfig]:
        """Data, the head's prepared config, the model (built once), optimizer & co, and the resumed state."""
        cfg, device = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        distiller = self._distiller  # its teacher's input size shapes the data
        train_set, val_set = prepare_data(cfg, self.index, self.run_dir, self.resume_path is not None, self.dist,
                                          self.bus, distiller.teacher_img_size if distiller is not None else None,
                                          extra=self.extra_indexes)
        train_loader, sampler, val_loader = make_loaders(cfg, train_set, val_set, device, self.dist)
        self._data = (train_set, val_set, train_loader, sampler, val_loader)
        run_cfg = self.head_cls.prepare_config(cfg, train_set.boxes)  # once, before the model: never changed
        if run_cfg == self.head_cls.stand_in_config(cfg):
            model = self._model  # built in __init__ from the seed, as a build here would be
            torch.set_rng_state(self._rng_after_build)
        else:
            torch.manual_seed(cfg.seed)
            model = build_detector(run_cfg)
        self._model = None  # the state holds it from now on
        model = model.to(device, memory_format=torch.channels_last)
        if run_cfg.ckpt:
            self._init_weights_from(model, run_cfg)
        if run_cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        state = new_train_state(run_cfg, model, distiller, device, self.dist, len(train_loader))
        if self.resume_checkpoint is not None:
            self._restore(state)
        self._announce(state, len(train_set), len(val_set))
        return state, run_cfg

    def _restore(self, state: TrainState) -> None:
        before = restore_train_state(state, self.resume_checkpoint, state.cfg, self.device, self.resume_path)
        if before != self.dist.world_size:
            batch = state.cfg.batch_size
            self.bus.emit(RunWarning(
                f"resuming a run trained with {before} process(es) on {self.dist.world_size}: the global batch "
                f"changes from {before * batch} to {self.dist.world_size * batch} images "
                "(consider scaling --lr with it)"))

    def _announce(self, state: TrainState, num_train: int, num_val: int) -> None:
        """config.yaml (the prepared config) and RunStarted."""
        cfg = state.cfg
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", config_to_yaml(cfg))
        distiller_terms = state.distiller.loss_terms if state.distiller else ()
        self.bus.emit(RunStarted(
            run_dir=str(self.run_dir), exp_name=cfg.exp_name, preset=cfg.preset, arch=cfg.arch, head=cfg.head_name,
            params=count_parameters(state.model), img_size=list(cfg.img_size), device=str(self.device),
            num_train=num_train, num_val=num_val, epochs=cfg.epochs, start_epoch=state.start_epoch,
            steps_per_epoch=state.steps_per_epoch, batch_size=cfg.batch_size,
            loss_terms=["loss", *state.model.head.loss_terms, *distiller_terms],
            resumed_from=str(self.resume_path or ""), world_size=self.dist.world_size,
        ))

    def _init_weights_from(self, model: Detector, cfg: RunConfig) -> None:
        """--ckpt: copy the checkpoint's weights (EMA when present, read in __init__) into the new model.

        Strict: any missing, unexpected or shape-mismatched tensor is an error that lists them.
        --ckpt-non-strict: copy every tensor whose name and shape match, report the rest (WeightsLoaded).
        """
        state = self._initial_state
        own = model.state_dict()
        missing, unexpected, mismatched = compare_state_dicts(own, state)
        if not cfg.ckpt_non_strict:
            require_exact_fit(cfg.ckpt, missing, unexpected, mismatched)
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matching, strict=False)
        self.bus.emit(WeightsLoaded(str(cfg.ckpt), not cfg.ckpt_non_strict, len(matching), len(own),
                                    missing, unexpected, mismatched))

    def _train_epoch(self, state: TrainState, epoch: int) -> bool:
        """One epoch of run_step; False when a stop came before its last step (a last_ checkpoint of the
        epoch before is saved then)."""
        cfg, (_, _, train_loader, sampler, _) = state.cfg, self._data
        state.model.train()
        sampler.set_epoch(epoch)
        meter = EpochMeter(epoch, state.steps_per_epoch)
        step, stop = 0, False
        for step, batch in enumerate(batches_surfacing_worker_errors(train_loader), start=1):
            outcome = run_step(state, cfg, batch, self.device, self.dist,
                               (self._stop_requested, self._save_requested), (epoch, step))
            meter.add(outcome)
            stop = outcome.stop
            if outcome.losses is None:
                if stop:
                    break
                continue
            if step % cfg.log_interval == 0 or step == state.steps_per_epoch or stop:
                meter.emit_window(self.bus, step, state.global_step, state.optimizer.param_groups[0]["lr"])
            if outcome.save and not stop:
                self._save_requested = False
                self._save(state, "manual", epoch - 1, step=step)
            if stop:
                break
        meter.emit_epoch(self.bus, step)
        state.stopped = stop
        if stop and step < state.steps_per_epoch:
            # An interrupted epoch is not a finished one: resume redoes it.
            state.last_path = self._save(state, "last", epoch - 1)
            state.epochs_done = epoch - 1
            return False
        return True

    def _evaluate(self, state: TrainState, epoch: int) -> None:
        """Rank 0 evaluates (EMA weights when kept) on the whole val split: the single-process mAP of these
        (identical) weights; a new best is saved and rendered."""
        cfg, (_, val_set, _, _, val_loader) = state.cfg, self._data
        if not (self.dist.is_main and len(val_set) and (epoch % cfg.eval_interval == 0 or epoch == cfg.epochs)):
            return
        eval_model = state.ema.module if state.ema is not None else state.model
        t_eval = time.perf_counter()
        out = evaluate_detector(eval_model, val_loader, self.device, cfg.num_classes, cfg.topk, state.amp_dtype)
        map50 = out.result.map
        is_best = map50 > state.best_map
        render_dir = ""
        if is_best:
            state.best_map = map50
            state.best_path = self._save(state, "best", epoch, map50=map50)
            render_dir = str(write_renders(self.run_dir / f"{epoch:04d}", val_set.images, out.detections,
                                           out.ground_truths, cfg.conf_thresh, NUM_RENDERS))
        self.bus.emit(EvalFinished(epoch, map50, {str(k): v for k, v in out.result.per_class.items()},
                                   state.best_map, is_best, time.perf_counter() - t_eval, render_dir))

    def _save(self, state: TrainState, kind: str, epoch: int, map50: float = 0.0, step: int = 0) -> Path:
        """Checkpoint ``kind`` ("best" | "last" | "manual") of the last finished ``epoch`` (see save_train_state)."""
        return save_train_state(state, kind, cfg=state.cfg, run_dir=self.run_dir, dist=self.dist, bus=self.bus,
                                epoch=epoch, map50=map50, step=step)

    def _finish(self, state: TrainState, seconds: float) -> RunResult:
        cfg = state.cfg
        evaluated = state.best_map >= 0  # -1 until an evaluation ran (here or in the run this one resumes)
        result = RunResult(self.run_dir, max(state.best_map, 0.0), state.best_path, state.last_path,
                           state.epochs_done, state.stopped, evaluated=evaluated, preset_epochs=preset_epochs(cfg),
                           preset=cfg.preset, image_dir=str(cfg.image_dir))
        self.bus.emit(RunFinished(str(self.run_dir), result.best_map50, str(state.best_path or ""),
                                  str(state.last_path or ""), state.epochs_done, seconds, state.stopped,
                                  evaluated=evaluated))
        return result
