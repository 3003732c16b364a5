"""The training loop: short, explicit, and silent except for the events it emits."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from uhd_core.anchors import box_sizes, fit_anchors
from uhd_core.augment.pipeline import load_augment_pipeline
from uhd_core.config import RunConfig, build_config, check_implemented, config_to_yaml, stored_config
from uhd_core.data.dataset import (
    CachedDetectionDataset,
    EpochShuffleSampler,
    collate_detection,
    decode_all,
    default_cache_dir,
    images_to_input,
    require_image_dir,
    scan_yolo_folder,
    split_files,
)
from uhd_core.data.files import shown
from uhd_core.distill.base import Distiller, cosine_ramp
from uhd_core.distill.factory import build_distiller
from uhd_core.distill.vit import VIT_TEACHER_ARCHS
from uhd_core.engine.checkpoint import atomic_write_text, load_checkpoint, prune_checkpoints, save_checkpoint
from uhd_core.engine.cpu_threads import apply_intra_op_threads
from uhd_core.engine.distributed import DistContext, EpochTaggedDistributedSampler
from uhd_core.engine.ema import ModelEMA
from uhd_core.engine.evaluate import evaluate_detector
from uhd_core.engine.events import (
    CheckpointSaved,
    DataPrepared,
    DecodeProgressed,
    EpochEnded,
    EvalFinished,
    EventBus,
    RunFailed,
    RunFinished,
    RunStarted,
    RunWarning,
    StepEnded,
    WeightsLoaded,
)
from uhd_core.engine.render import write_renders
from uhd_core.engine.run_lock import RunDirLock
from uhd_core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    RunDirError,
    TrainingError,
    UhdError,
    bounded,
    first_line,
)
from uhd_core.models.detector import Detector, build_detector, count_parameters
from uhd_core.models.registry import BACKBONES
from uhd_core.outputs import describe_os_error

KEEP_CHECKPOINTS = 10
#: OS errors of a write that the user fixes on the disk (full, quota, read-only, permissions).
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})
NUM_RENDERS = 10
MAX_REPORTED_ISSUES = 20
#: The cosine schedule ends at this fraction of --lr rather than 0, so the last epochs still learn.
FINAL_LR_FRACTION = 0.01
#: Free disk space required before training: this many checkpoints (a best and a last, plus the temp
#: file of the next save) of the model's estimated size.
CHECKPOINTS_OF_HEADROOM = 3


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


def find_resume_checkpoint(path: str) -> Path:
    """A file, or a run dir meaning its newest loadable checkpoint: last_*.pt, else best_*.pt or manual_*.pt
    (a run whose disk filled up may hold only a best_ one; every kind holds the full training state)."""
    p = Path(path).expanduser()
    if p.is_dir():
        for candidate in resumable_checkpoints(p):
            try:
                load_checkpoint(candidate)
                return candidate
            except CheckpointError:
                continue
        raise CheckpointError(f"--resume {bounded(p)}: no loadable checkpoint (last_*.pt, best_*.pt or manual_*.pt) "
                              "in that folder")
    if not p.is_file():
        raise CheckpointError(f"--resume {bounded(p)}: no such checkpoint")
    return p


def make_run_config(preset: str | None, overrides: dict[str, Any]) -> tuple[RunConfig, dict[str, Any] | None, Path | None]:
    """Config for `uhd train`: checkpoint config (when resuming) < preset < typed flags.

    Returns (config, the resume checkpoint or None, its path or None).
    """
    resume = overrides.get("resume") or ""
    if not resume and preset:
        resume = build_config(preset).resume
    if not resume:
        return build_config(preset, overrides), None, None
    path = find_resume_checkpoint(resume)
    ckpt = load_checkpoint(path)
    # The stored --ckpt only initialised that run; resuming continues from the resume checkpoint.
    base = {**stored_config(ckpt["config"]), "ckpt": "", "ckpt_non_strict": False}
    cfg = build_config(preset, {**overrides, "resume": str(path)}, base=base)
    return cfg, ckpt, path


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


def cosine_lr_lambda(total_steps: int):
    def factor(step: int) -> float:
        progress = min(step / max(1, total_steps), 1.0)
        return FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


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


def detach_worker_from_job_signals(_worker_id: int) -> None:
    """Ctrl-C (and a SIGTERM sent to the job's process group, e.g. by `timeout` or a container stop)
    reaches every process of the group; only the main process should decide (finish the step, save).
    A worker in a process group of its own is not signalled with the job, yet still stops when the
    main process shuts it down (SIGTERM to its pid) or dies (torch's worker loop watches its parent)."""
    os.setpgid(0, 0)


def original_worker_error(exc: BaseException) -> str:
    """The original error of a DataLoader worker: torch re-raises it with the whole worker traceback in
    the message, whose last line is ``Type: message`` of the exception raised in the worker."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        qualified_type, _, message = text.splitlines()[-1].partition(": ")
        return f"{qualified_type.rsplit('.', 1)[-1]}: {message}"
    if "DataLoader worker" in text:  # killed (e.g. out of memory) rather than raising
        return f"{first_line(exc)} (out of memory? try a smaller --batch-size or --num-workers 0)"
    return f"{type(exc).__name__}: {first_line(exc)}"


def batches_surfacing_worker_errors(loader: DataLoader):
    """Iterate ``loader``; a failure while loading becomes one TrainingError naming the original error
    (whose message names the image; see CachedDetectionDataset) instead of a worker traceback."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - whatever failed in the worker, say it in one line
            raise TrainingError(f"loading a training batch failed: {original_worker_error(exc)}") from exc
        yield batch


def initial_weights(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What --ckpt copies from a checkpoint: its EMA weights when it has them, else the model's."""
    return ckpt["ema"]["module"] if ckpt.get("ema") else ckpt["model"]


class FiniteWatch:
    """Every floating-point tensor a training step changes in place (parameters, BatchNorm buffers, a
    distiller's trainable parts), checked for NaN/inf with one fused reduction.

    A step whose loss is finite can still write inf/NaN into the weights (an update that overflows at a
    huge --lr, fp16 overflow); the loss check alone let such weights train on and be saved. The check is
    ``torch._foreach_norm(tensors, inf)`` (max |x| per tensor: NaN and inf propagate, a large finite
    weight cannot overflow as a 2-norm would) and one host sync. Measured on 1 CPU thread: 130 us per
    check on the quickstart model (38 tensors) against a 13.5 ms step, 44 us against 3.6 ms for a width-8
    CNN: about 1% of a step.
    """

    def __init__(self, named: list[tuple[str, torch.Tensor]]) -> None:
        self.named = [(name, t) for name, t in named if t.is_floating_point()]
        self.tensors = [t.detach() for _, t in self.named]

    def all_finite(self) -> bool:
        if not self.tensors:
            return True
        with torch.no_grad():
            return bool(torch.isfinite(torch.stack(torch._foreach_norm(self.tensors, float("inf")))).all())

    def bad_names(self) -> list[str]:
        """The names of the tensors holding a NaN or inf (slow path, after all_finite() said False)."""
        return [name for name, t in self.named if not bool(torch.isfinite(t.detach()).all())]


def nonfinite_entries(value: Any, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in a (nested) checkpoint payload holding NaN or inf."""
    if isinstance(value, torch.Tensor):
        return [prefix] if value.is_floating_point() and not bool(torch.isfinite(value).all()) else []
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return []
    return [name for key, item in items for name in nonfinite_entries(item, f"{prefix}.{key}" if prefix else str(key))]


def divergence_causes(cfg: RunConfig) -> str:
    """The usual reasons weights or losses go non-finite, with this run's values."""
    return (f"Likely causes: --lr too high (now {cfg.lr:g}), fp16 overflow with --use-amp (train without it), "
            f"--grad-clip-norm 0 (now {cfg.grad_clip_norm:g}), or very large loss weights")


def name_list(names: list[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


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


class ForwardWithFeatures(torch.nn.Module):
    """Detector.forward_with_features as a module's forward, so DistributedDataParallel can wrap it."""

    def __init__(self, detector: Detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.detector.forward_with_features(images)


class Trainer:
    def __init__(self, cfg: RunConfig, bus: EventBus | None = None, *, resume_checkpoint: dict[str, Any] | None = None,
                 resume_path: Path | None = None, dist: DistContext | None = None) -> None:
        """``dist``: this process's place in a multi-process (DDP) job; None = a plain single process."""
        check_implemented(cfg)
        if cfg.arch not in BACKBONES:
            raise ConfigError(f"--arch {cfg.arch} is not implemented yet (available: {', '.join(BACKBONES.names())})")
        try:  # the architecture's own checks (e.g. --d-model vs --heads), on a throwaway backbone
            BACKBONES.get(cfg.arch)(cfg)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        # Everything a run can be refused for is checked here, before any run dir, log or event file
        # is made for a run that cannot start.
        self.index = scan_yolo_folder(require_image_dir(cfg.image_dir), cfg.classes, cfg.follow_symlinks)
        self.dist = dist or DistContext()
        self.device = self.dist.device(resolve_device(cfg.device))
        if cfg.sync_bn and (self.device.type != "cuda" or self.dist.world_size < 2):
            raise ConfigError("--sync-bn synchronises BatchNorm across CUDA processes: it needs a CUDA device and "
                              "--devices > 1 (torch's SyncBatchNorm has no CPU implementation)")
        load_augment_pipeline(cfg.aug_config)  # a bad op or value: ConfigError now, not in a worker
        for flag, path in (("--ckpt", cfg.ckpt), ("--teacher-ckpt", cfg.teacher_ckpt)):
            if path and not Path(path).expanduser().is_file():
                raise CheckpointError(f"{flag} {path}: no such checkpoint file")
        # --ckpt's weights, read once here (unsafe or unknown-format files are refused now) and copied
        # into the model by run(); the --teacher-ckpt is read by build_distiller below.
        self._initial_state = initial_weights(load_checkpoint(cfg.ckpt)) if cfg.ckpt else None
        # What an earlier UHD could save after a diverged step: refuse it rather than train on NaN.
        for path, weights in ((resume_path, resume_checkpoint and {"model": resume_checkpoint.get("model"),
                                                                    "ema": resume_checkpoint.get("ema")}),
                              (cfg.ckpt, self._initial_state)):
            bad = nonfinite_entries(weights) if weights else []
            if bad:
                raise CheckpointError(f"{bounded(path)} holds NaN/inf weights ({name_list(bad)}); start from an "
                                      "earlier checkpoint")
        if self._initial_state is not None and not cfg.ckpt_non_strict:
            # Anchors fitted later (--auto-anchors) only set values; stand-ins give the same shapes.
            shaped = cfg if cfg.anchors or not cfg.use_anchor else cfg.model_copy(
                update={"anchors": ((0.1, 0.1),) * cfg.num_anchors})
            require_exact_fit(cfg.ckpt, *compare_state_dicts(build_detector(shaped).state_dict(), self._initial_state))
        if cfg.teacher_backbone and not Path(cfg.teacher_backbone).expanduser().is_file():
            spec = VIT_TEACHER_ARCHS.get(cfg.teacher_backbone_arch)
            wanted = f"; obtain the official {spec.official_file} and put it there" if spec else ""
            raise CheckpointError(f"--teacher-backbone {cfg.teacher_backbone}: no such file{wanted} "
                                  "(or pass --teacher-backbone PATH)")
        # The teacher loads here (a file of the wrong layout is refused now); its own RNG use (a feature
        # adapter's init) is forked off so that the model's init depends on the seed alone.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self._distiller: Distiller | None = build_distiller(cfg, self.device)
        self.cfg = cfg
        self.bus = bus or EventBus()
        self.resume_checkpoint = resume_checkpoint
        self.resume_path = resume_path
        self._stop_requested = False
        self._save_requested = False
        self._lock: RunDirLock | None = None
        self.run_dir = self._run_dir_path()
        if self.dist.is_main:  # rank 0 alone writes, so rank 0 alone locks the run dir
            shaped = cfg if cfg.anchors or not cfg.use_anchor else cfg.model_copy(
                update={"anchors": ((0.1, 0.1),) * cfg.num_anchors})
            self._claim_run_dir(estimated_checkpoint_bytes(build_detector(shaped), cfg.use_ema))
        else:
            self._refuse_existing_checkpoints()

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

    # -- run dir --------------------------------------------------------------------------------
    def _run_dir_path(self) -> Path:
        if self.resume_path is not None:
            return self.resume_path.resolve().parent
        return Path(self.cfg.runs_dir) / self.cfg.exp_name  # exp_name is one folder name (RunConfig)

    def _refuse_existing_checkpoints(self) -> None:
        run_dir = self.run_dir
        if self.resume_path is None and not self.cfg.exist_ok and run_dir.is_dir() and any(run_dir.glob("*.pt")):
            raise RunDirError(
                f"{run_dir} already holds checkpoints; use --resume {run_dir}, a new --exp-name, or --exist-ok"
            )

    def _claim_run_dir(self, checkpoint_bytes: int) -> None:
        """Create and lock the run dir, then refuse it if it cannot hold this run. A refusal releases the
        lock and removes the folders this call created, so it leaves nothing behind (a rerun is never
        refused because of an earlier refused one)."""
        run_dir = self.run_dir
        created = missing_dirs(run_dir)
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            remove_empty_dirs(created)
            raise not_writable(run_dir, exc) from None
        try:
            # First the lock: a run still training there (or a resume of it) is refused before anything,
            # even the checks below, touches its files.
            self._lock = RunDirLock(run_dir).acquire()
            self._refuse_existing_checkpoints()
            if self.resume_path is not None:
                # Temp files of saves cut short by a crash (kill -9 mid-write); the checkpoints themselves
                # were only ever renamed into place complete. Safe now: nobody else holds the run dir.
                for stale in run_dir.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
            require_writable_dir(run_dir)
            require_free_space(run_dir, CHECKPOINTS_OF_HEADROOM * checkpoint_bytes)
        except BaseException:
            self.close()
            remove_empty_dirs(created)
            raise

    # -- data -----------------------------------------------------------------------------------
    def _prepare_data(self, teacher_size: tuple[int, int] | None = None
                      ) -> tuple[CachedDetectionDataset, CachedDetectionDataset]:
        """Train and val sets at --img-size. With a ``teacher_size`` that differs, the training images are
        (also) decoded at that size and every training item carries both renditions (see
        CachedDetectionDataset); validation stays student-only."""
        cfg = self.cfg
        index = self.index
        if len(index) == 0:
            raise DataError(f"--image-dir {cfg.image_dir}: no image has a box of --classes {','.join(map(str, cfg.classes))}")
        split_path = self.run_dir / "split.json"
        if self.resume_path is not None and split_path.is_file():
            saved = json.loads(split_path.read_text(encoding="utf-8"))
            known = set(index.files)
            train_files = [f for f in saved["train"] if f in known]
            val_files = [f for f in saved["val"] if f in known]
        else:
            train_files, val_files = split_files(index.files, cfg.train_split, cfg.val_split, cfg.seed)
        if not train_files:
            raise DataError(f"--image-dir {cfg.image_dir}: the split leaves no training images")
        position = {name: i for i, name in enumerate(index.files)}
        used = sorted(set(train_files) | set(val_files))
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
        step = max(1, len(used) // 50)
        if not self.dist.is_main:
            self.dist.barrier()  # wait for rank 0 to fill the decode cache, then read it
        decoded = decode_all(
            index.root, used, cfg.img_size, cfg.resize_interpolation, cache_dir,
            progress=lambda done, total: self.bus.emit(DecodeProgressed(done, total))
            if done % step == 0 or done == total else None,
            max_pixels=cfg.max_image_pixels, follow_symlinks=cfg.follow_symlinks,
        )
        if decoded.cache_warning and self.dist.is_main:
            self.bus.emit(RunWarning(decoded.cache_warning))
        row = {name: i for i, name in enumerate(used)}
        failures = [f"{shown(index.root / used[i])}: {decoded.errors[i]}"
                    for i in range(len(used)) if not decoded.ok[i]]
        if self.dist.is_main:
            self.dist.barrier()
        train_files = [f for f in train_files if decoded.ok[row[f]]]
        val_files = [f for f in val_files if decoded.ok[row[f]]]
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(split_path, json.dumps({"seed": cfg.seed, "train": train_files, "val": val_files},
                                                     indent=0))
        examples = failures + [str(issue) for issue in index.issues]
        self.bus.emit(DataPrepared(
            image_dir=shown(index.root), num_images=len(index), num_train=len(train_files), num_val=len(val_files),
            num_without_targets=index.num_without_targets, num_label_issues=len(index.issues),
            num_decode_failures=len(failures), from_cache=decoded.from_cache,
            examples=examples[:MAX_REPORTED_ISSUES],
        ))
        if not train_files:
            raise DataError(f"--image-dir {cfg.image_dir}: no training image could be decoded")

        def subset(files: list[str], augment, images: np.ndarray, student_size=None,
                   row_of: dict[str, int] = row) -> CachedDetectionDataset:
            rows = [row_of[f] for f in files]
            return CachedDetectionDataset(
                images[rows], [index.boxes[position[f]] for f in files],
                [index.labels[position[f]] for f in files], augment=augment, seed=cfg.seed,
                student_size=student_size, interpolation=cfg.resize_interpolation, names=files,
            )

        augment = load_augment_pipeline(cfg.aug_config)
        val_set = subset(val_files, None, decoded.images)
        if teacher_size is None or tuple(teacher_size) == tuple(cfg.img_size):
            return subset(train_files, augment, decoded.images), val_set
        # The teacher sees each augmented sample at its own (larger) size: augment there, resize down
        # for the student. Train images only; decode failures are the same at any size.
        large = decode_all(index.root, train_files, teacher_size, cfg.resize_interpolation, cache_dir,
                           max_pixels=cfg.max_image_pixels, follow_symlinks=cfg.follow_symlinks)
        return subset(train_files, augment, large.images, student_size=cfg.img_size,
                      row_of={f: i for i, f in enumerate(train_files)}), val_set

    def _loaders(self, train_set, val_set, device: torch.device) -> tuple[DataLoader, EpochShuffleSampler, DataLoader]:
        """A process of a DDP job gets its shard of every epoch (--batch-size is per process)."""
        cfg = self.cfg
        if self.dist.enabled:
            sampler = EpochTaggedDistributedSampler(train_set, self.dist.world_size, self.dist.rank, shuffle=True,
                                                    seed=cfg.seed)
        else:
            sampler = EpochShuffleSampler(len(train_set), cfg.seed, shuffle=True)
        workers = cfg.num_workers
        pin = device.type == "cuda"
        train_loader = DataLoader(
            train_set, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_detection,
            num_workers=workers, persistent_workers=workers > 0, pin_memory=pin,
            drop_last=len(sampler) > cfg.batch_size,  # a trailing batch of 1 would break BatchNorm
            worker_init_fn=detach_worker_from_job_signals if workers > 0 else None,
        )
        val_loader = DataLoader(val_set, batch_size=max(cfg.batch_size, 64), shuffle=False,
                                collate_fn=collate_detection, num_workers=0, pin_memory=pin)
        return train_loader, sampler, val_loader

    # -- anchors --------------------------------------------------------------------------------
    def _fit_anchors(self, train_set: CachedDetectionDataset) -> RunConfig:
        """--auto-anchors: k-means + evolution on the training split's boxes; the anchors are stored in
        the config (and so in config.yaml and every checkpoint), which resume then reuses as is.
        Explicit --anchors win: fitting only happens when the config holds none."""
        cfg = self.cfg
        wh = box_sizes(train_set.boxes)
        if len(wh) == 0:
            raise DataError("--auto-anchors: the training split has no boxes to fit anchors to")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fewer distinct sizes than anchors: fit_anchors returns fewer
            anchors = fit_anchors(wh, cfg.num_anchors, seed=cfg.seed)
        return cfg.model_copy(update={"anchors": tuple((float(w), float(h)) for w, h in anchors),
                                      "auto_anchors": False})

    # -- model state ----------------------------------------------------------------------------
    def _init_weights_from(self, model: Detector, path: str) -> None:
        """--ckpt: copy the checkpoint's weights (EMA when present, read in __init__) into the new model.

        Strict: any missing, unexpected or shape-mismatched tensor is an error that lists them.
        --ckpt-non-strict: copy every tensor whose name and shape match, report the rest (WeightsLoaded).
        """
        state = self._initial_state
        own = model.state_dict()
        missing, unexpected, mismatched = compare_state_dicts(own, state)
        if not self.cfg.ckpt_non_strict:
            require_exact_fit(path, missing, unexpected, mismatched)
        matching = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(matching, strict=False)
        self.bus.emit(WeightsLoaded(str(path), not self.cfg.ckpt_non_strict, len(matching), len(own),
                                    missing, unexpected, mismatched))

    # -- the loop -------------------------------------------------------------------------------
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
                                  f"{self._how_to_go_on()}")
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

    def _how_to_go_on(self) -> str:
        """After a failed write: how to continue once the disk has room (resume needs a checkpoint)."""
        resumable = resumable_checkpoints(self.run_dir) if self.run_dir.is_dir() else []
        if resumable:
            return f"the checkpoints there are kept: free some space, then uhd train --resume {bounded(self.run_dir)}"
        return "no checkpoint was written yet: free some space, then run the same command again"

    def _run(self) -> RunResult:
        cfg = self.cfg
        device = self.device
        torch.manual_seed(cfg.seed)
        distiller = self._distiller  # its teacher's input size shapes the data
        train_set, val_set = self._prepare_data(distiller.teacher_img_size if distiller is not None else None)
        train_loader, sampler, val_loader = self._loaders(train_set, val_set, device)
        steps_per_epoch = len(train_loader)
        total_steps = max(1, cfg.epochs * steps_per_epoch)
        if cfg.use_anchor and not cfg.anchors:
            cfg = self.cfg = self._fit_anchors(train_set)

        model = build_detector(cfg).to(device, memory_format=torch.channels_last)
        if cfg.ckpt:
            self._init_weights_from(model, cfg.ckpt)
        if cfg.sync_bn:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # The step's forward goes through DDP when distributed (its hooks average the gradients);
        # `model` stays the plain Detector: EMA, eval and checkpoints use it, so no "module." prefixes.
        forward = model.forward_with_features
        if self.dist.enabled:
            forward = DistributedDataParallel(
                ForwardWithFeatures(model), device_ids=[device.index] if device.type == "cuda" else None)
        # A distiller's own trainable parts (e.g. a feature adapter) learn with the student.
        trained = list(model.parameters()) + (distiller.trainable_parameters() if distiller is not None else [])
        optimizer = torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr_lambda(cfg.epochs * steps_per_epoch))
        use_fp16 = cfg.use_amp and device.type == "cuda"
        amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if cfg.use_amp else None
        scaler = torch.amp.GradScaler("cuda", enabled=use_fp16)
        ema = ModelEMA(model, cfg.ema_decay) if cfg.use_ema else None  # updated on every rank: identical copies

        start_epoch, global_step, best_map = 1, 0, -1.0
        best_path: Path | None = None
        if self.resume_checkpoint is not None:
            ck = self.resume_checkpoint
            model.load_state_dict(ck["model"])
            optimizer.load_state_dict(ck["optimizer"])
            scheduler.load_state_dict(ck["scheduler"])
            # LambdaLR's state keeps the old lambda's last factor; recompute it for the (maybe longer) schedule.
            scheduler.lr_lambdas = [cosine_lr_lambda(cfg.epochs * steps_per_epoch)]
            if ck.get("scaler"):
                scaler.load_state_dict(ck["scaler"])
            if ema is not None and ck.get("ema"):
                ema.load_state_dict(ck["ema"])
            if distiller is not None and ck.get("distiller"):
                distiller.load_student_side_state_dict(ck["distiller"])
            torch.set_rng_state(ck["rng"]["torch"])
            if device.type == "cuda" and ck["rng"].get("cuda"):
                torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
            start_epoch = int(ck["epoch"]) + 1
            global_step = int(ck["global_step"])
            best_map = float(ck.get("best_map50", -1.0))
            best_path = Path(ck["best_checkpoint"]) if ck.get("best_checkpoint") else None
            if start_epoch > cfg.epochs:
                raise ConfigError(
                    f"{self.resume_path} already finished epoch {ck['epoch']} of {cfg.epochs}; "
                    "pass a larger --epochs to extend training"
                )
            before = int(ck.get("world_size", 1))
            if before != self.dist.world_size:
                self.bus.emit(RunWarning(
                    f"resuming a run trained with {before} process(es) on {self.dist.world_size}: the global batch "
                    f"changes from {before * cfg.batch_size} to {self.dist.world_size * cfg.batch_size} images "
                    "(consider scaling --lr with it)"))

        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.run_dir / "config.yaml", config_to_yaml(cfg))
        self.bus.emit(RunStarted(
            run_dir=str(self.run_dir), exp_name=cfg.exp_name, preset=cfg.preset, arch=cfg.arch, head=cfg.head_name,
            params=count_parameters(model), img_size=list(cfg.img_size), device=str(device),
            num_train=len(train_set), num_val=len(val_set), epochs=cfg.epochs, start_epoch=start_epoch,
            steps_per_epoch=steps_per_epoch, batch_size=cfg.batch_size, loss_terms=["loss", *model.head.loss_terms, *(distiller.loss_terms if distiller else ())],
            resumed_from=str(self.resume_path or ""), world_size=self.dist.world_size,
        ))

        # Not the EMA copy: it averages weights this check saw finite, and copies their buffers, so it is
        # finite too (and _save checks it); leaving it out halves the cost (~1% of a step, not ~2%).
        watch = FiniteWatch([
            *model.named_parameters(), *model.named_buffers(),
            *((f"distiller.{i}", t) for i, t in enumerate(distiller.trainable_parameters() if distiller else ())),
        ])
        t_run = time.perf_counter()
        last_path: Path | None = None
        consecutive_nonfinite = 0
        epochs_done = start_epoch - 1
        stop_now = False
        for epoch in range(start_epoch, cfg.epochs + 1):
            model.train()
            sampler.set_epoch(epoch)
            sums: dict[str, torch.Tensor] = {}
            window: dict[str, torch.Tensor] = {}
            window_steps, window_imgs, epoch_imgs, counted_steps, skipped_steps = 0, 0, 0, 0, 0
            t_epoch = t_window = time.perf_counter()
            step = 0
            for step, batch in enumerate(batches_surfacing_worker_errors(train_loader), start=1):
                x = images_to_input(batch.images, device)
                boxes = batch.boxes.to(device, non_blocking=True)
                labels = batch.labels.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    outputs, features = forward(x)
                targets = model.head.build_targets(boxes, labels, model.head.output_hw(outputs))
                losses = model.head.loss(outputs, targets)
                if distiller is not None:
                    teacher_x = x if batch.teacher_images is None else images_to_input(batch.teacher_images, device)
                    scale = cosine_ramp(global_step / total_steps) if cfg.distill_cosine else 1.0
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        distill_loss, distill_terms = distiller(outputs, features, teacher_x, scale)
                    losses = {**losses, **distill_terms, "loss": losses["loss"] + distill_loss}
                loss = losses["loss"]
                # In a DDP job every rank must skip, save and stop at the same step (a rank that skipped
                # the backward would leave the others waiting in its all-reduce): one tiny all-reduce, and
                # this step's decisions use its result only, never a flag a signal may set meanwhile.
                nonfinite, stop, save = self.dist.all_max(
                    [float(not torch.isfinite(loss)), float(self._stop_requested), float(self._save_requested)])
                stop_now, save_now = bool(stop), bool(save)
                if nonfinite:
                    # Skip the update (weights, EMA, schedule untouched) instead of poisoning the weights;
                    # a streak of them means training diverged, and the last good checkpoint stays as is.
                    skipped_steps += 1
                    consecutive_nonfinite += 1
                    if consecutive_nonfinite >= cfg.max_nonfinite_steps:
                        raise TrainingError(
                            f"{consecutive_nonfinite} consecutive steps had a non-finite loss (last {loss.item()} at "
                            f"epoch {epoch} step {step}); stopped. {divergence_causes(cfg)}. The last good "
                            f"checkpoint is {last_path or 'none (no epoch finished)'}"
                        )
                    # The forward of a skipped step still updated the BatchNorm statistics.
                    self._require_finite_state(watch, epoch, step, last_path)
                    if stop_now:
                        break
                    continue
                consecutive_nonfinite = 0
                counted_steps += 1
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if distiller is not None:
                    self.dist.average_gradients(distiller.trainable_parameters())  # not inside the DDP module
                if cfg.grad_clip_norm > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(trained, cfg.grad_clip_norm)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update(model)
                global_step += 1
                # Before anything uses or saves them: weights that went non-finite stop the run here.
                self._require_finite_state(watch, epoch, step, last_path)
                n = x.shape[0]
                window_imgs += n
                epoch_imgs += n
                window_steps += 1
                for name, value in losses.items():
                    v = value.detach()
                    sums[name] = sums.get(name, 0) + v
                    window[name] = window.get(name, 0) + v
                if step % cfg.log_interval == 0 or step == steps_per_epoch or stop_now:
                    now = time.perf_counter()
                    self.bus.emit(StepEnded(
                        epoch=epoch, step=step, steps_per_epoch=steps_per_epoch, global_step=global_step,
                        losses={k: float(v) / window_steps for k, v in window.items()},
                        lr=optimizer.param_groups[0]["lr"], imgs_per_s=window_imgs / max(now - t_window, 1e-9),
                    ))
                    window, window_steps, window_imgs, t_window = {}, 0, 0, now
                if save_now and not stop_now:
                    self._save_requested = False
                    self._save(model, optimizer, scheduler, scaler, ema, epoch - 1, global_step, best_map, best_path,
                               "manual", step=step)
                if stop_now:
                    break
            seconds = time.perf_counter() - t_epoch
            self.bus.emit(EpochEnded(epoch, {k: float(v) / max(counted_steps, 1) for k, v in sums.items()}, seconds,
                                     epoch_imgs / max(seconds, 1e-9), skipped_steps, steps_done=step,
                                     steps_per_epoch=steps_per_epoch))
            if stop_now and step < steps_per_epoch:
                # An interrupted epoch is not a finished one: resume redoes it.
                last_path = self._save(model, optimizer, scheduler, scaler, ema, epoch - 1, global_step, best_map,
                                       best_path, "last")
                epochs_done = epoch - 1
                break

            eval_model = ema.module if ema is not None else model
            # Rank 0 evaluates on the whole val split: the single-process mAP of these (identical) weights.
            if self.dist.is_main and len(val_set) and (epoch % cfg.eval_interval == 0 or epoch == cfg.epochs):
                t_eval = time.perf_counter()
                out = evaluate_detector(eval_model, val_loader, device, cfg.num_classes, cfg.topk, amp_dtype)
                map50 = out.result.map
                is_best = map50 > best_map
                render_dir = ""
                if is_best:
                    best_map = map50
                    best_path = self._save(model, optimizer, scheduler, scaler, ema, epoch, global_step, best_map,
                                           None, "best", map50=map50)
                    render_dir = str(write_renders(self.run_dir / f"{epoch:04d}", val_set.images, out.detections,
                                                   out.ground_truths, cfg.conf_thresh, NUM_RENDERS))
                self.bus.emit(EvalFinished(epoch, map50, {str(k): v for k, v in out.result.per_class.items()},
                                           best_map, is_best, time.perf_counter() - t_eval, render_dir))
            last_path = self._save(model, optimizer, scheduler, scaler, ema, epoch, global_step, best_map, best_path,
                                   "last")
            epochs_done = epoch
            # A stop asked for after the epoch's last step: decided together too (rank 0 may still have
            # been evaluating while the others waited here).
            stop_now = bool(self.dist.all_max([float(self._stop_requested)])[0])
            if stop_now:
                break

        evaluated = best_map >= 0  # -1 until an evaluation ran (here or in the run this one resumes)
        result = RunResult(self.run_dir, max(best_map, 0.0), best_path, last_path, epochs_done, stop_now,
                           evaluated=evaluated, preset_epochs=preset_epochs(cfg), preset=cfg.preset,
                           image_dir=str(cfg.image_dir))
        self.bus.emit(RunFinished(str(self.run_dir), result.best_map50, str(best_path or ""), str(last_path or ""),
                                  epochs_done, time.perf_counter() - t_run, stop_now, evaluated=evaluated))
        return result

    def _require_finite_state(self, watch: FiniteWatch, epoch: int, step: int, last_path: Path | None) -> None:
        """TrainingError when a weight, buffer or EMA tensor holds NaN/inf (decided by every rank together)."""
        finite = watch.all_finite()
        if self.dist.enabled:  # BatchNorm statistics are per rank: a rank alone must not stop
            finite = not self.dist.all_max([float(not finite)])[0]
        if finite:
            return
        bad = watch.bad_names()
        raise TrainingError(
            f"epoch {epoch} step {step} made the weights non-finite (NaN/inf in {len(bad) or 'some'} of "
            f"{len(watch.tensors)} tensors{': ' + name_list(bad) if bad else ' on another process'}); stopped, and "
            f"they were not saved. {divergence_causes(self.cfg)}. The last good checkpoint is "
            f"{last_path or 'none (no epoch finished)'}")

    def _save(self, model, optimizer, scheduler, scaler, ema, epoch: int, global_step: int, best_map: float,
              best_path: Path | None, kind: str, map50: float | None = None, step: int = 0) -> Path:
        """kind "best" | "last" | "manual" (asked for mid-epoch with request_save; ``epoch`` is then the
        last finished epoch, so resuming from it redoes the current one)."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and next(model.parameters()).is_cuda:
            rng["cuda"] = torch.cuda.get_rng_state_all()
        if kind == "best":
            path = self.run_dir / f"best_{self.cfg.arch}_{epoch:04d}_map_{map50:.5f}.pt"
            pattern = f"best_{self.cfg.arch}_*.pt"
        elif kind == "manual":
            path = self.run_dir / f"manual_{epoch + 1:04d}_step_{step:05d}.pt"
            pattern = "manual_*.pt"
        else:
            path = self.run_dir / f"last_{epoch:04d}.pt"
            pattern = "last_*.pt"
        if not self.dist.is_main:
            return path  # rank 0 writes it (every rank holds the same weights)
        payload = {
            "config": self.cfg.model_dump(mode="json"),
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            # a distiller's trained parts (e.g. a feature adapter) for resume; never the teacher, never exported
            "distiller": self._distiller.student_side_state_dict() if self._distiller is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "epoch": epoch,
            "global_step": global_step,
            "best_map50": best_map,
            # a best checkpoint names itself; a last one names the best so far
            "best_checkpoint": str(path if kind == "best" else best_path or ""),
            "rng": rng,
            "world_size": self.dist.world_size,  # processes that trained it (resume warns when that changes)
        }
        # The last line of defence: whatever produced them, non-finite weights are never written (a NaN
        # checkpoint exports and evaluates as if it were a model).
        bad = nonfinite_entries({k: payload[k] for k in ("model", "ema", "distiller", "optimizer")})
        if bad:
            raise TrainingError(
                f"refusing to write checkpoint {path}: NaN/inf in {name_list(bad)}; the previous checkpoints in "
                f"{self.run_dir} are kept. {divergence_causes(self.cfg)}")
        try:
            save_checkpoint(path, payload)
        except OSError as exc:
            # The previous checkpoints are untouched: the write went to a temp file, pruning comes after.
            raise TrainingError(f"could not write checkpoint {path}: {exc.strerror or first_line(exc)}; "
                                f"{self._how_to_go_on()}") from None
        # Pruning only after the new file is safely in place: a crash never leaves fewer checkpoints.
        prune_checkpoints(self.run_dir, pattern, KEEP_CHECKPOINTS)
        self.bus.emit(CheckpointSaved(epoch, str(path), kind))
        return path

