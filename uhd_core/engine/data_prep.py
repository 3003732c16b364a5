"""The data of a run: the train/val split (kept across --resume), decoding into the cache, the datasets
and loaders, and worker errors surfaced as one line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from uhd_core.augment.pipeline import load_augment_pipeline
from uhd_core.config import RunConfig
from uhd_core.data.dataset import (
    CachedDetectionDataset,
    EpochShuffleSampler,
    collate_detection,
    decode_all,
    default_cache_dir,
    split_files,
)
from uhd_core.data.files import shown
from uhd_core.engine.distributed import DistContext, EpochTaggedDistributedSampler
from uhd_core.engine.events import DataPrepared, DecodeProgressed, EventBus, RunWarning
from uhd_core.errors import DataError, TrainingError, first_line
from uhd_core.outputs import atomic_write_text

MAX_REPORTED_ISSUES = 20


def _train_val_files(cfg: RunConfig, index: Any, split_path: Path, resuming: bool) -> tuple[list[str], list[str]]:
    """A resumed run keeps its split.json (minus files gone since); otherwise a seeded split."""
    if len(index) == 0:
        raise DataError(f"--image-dir {cfg.image_dir}: no image has a box of --classes {','.join(map(str, cfg.classes))}")
    if resuming and split_path.is_file():
        saved = json.loads(split_path.read_text(encoding="utf-8"))
        known = set(index.files)
        train_files = [f for f in saved["train"] if f in known]
        val_files = [f for f in saved["val"] if f in known]
    else:
        train_files, val_files = split_files(index.files, cfg.train_split, cfg.val_split, cfg.seed)
    if not train_files:
        raise DataError(f"--image-dir {cfg.image_dir}: the split leaves no training images")
    return train_files, val_files


def _decode(cfg: RunConfig, index: Any, used: list[str], dist: DistContext, bus: EventBus) -> Any:
    """Decode ``used`` at --img-size through the cache; rank 0 fills it, the other ranks read it."""
    step = max(1, len(used) // 50)
    if not dist.is_main:
        dist.barrier()  # wait for rank 0 to fill the decode cache, then read it
    decoded = decode_all(
        index.root, used, cfg.img_size, cfg.resize_interpolation, _cache_dir(cfg),
        progress=lambda done, total: bus.emit(DecodeProgressed(done, total))
        if done % step == 0 or done == total else None,
        max_pixels=cfg.max_image_pixels, follow_symlinks=cfg.follow_symlinks,
    )
    if decoded.cache_warning and dist.is_main:
        bus.emit(RunWarning(decoded.cache_warning))
    if dist.is_main:
        dist.barrier()
    return decoded


def _cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def prepare_data(cfg: RunConfig, index: Any, run_dir: Path, resuming: bool, dist: DistContext, bus: EventBus,
                 teacher_size: tuple[int, int] | None = None) -> tuple[CachedDetectionDataset, CachedDetectionDataset]:
    """Train and val sets at --img-size from the scanned ``index``; writes split.json (rank 0). With a
    ``teacher_size`` that differs, the training images are (also) decoded at that size and every
    training item carries both renditions (see CachedDetectionDataset); validation stays student-only."""
    split_path = run_dir / "split.json"
    train_files, val_files = _train_val_files(cfg, index, split_path, resuming)
    used = sorted(set(train_files) | set(val_files))
    decoded = _decode(cfg, index, used, dist, bus)
    row = {name: i for i, name in enumerate(used)}
    failures = [f"{shown(index.root / used[i])}: {decoded.errors[i]}" for i in range(len(used)) if not decoded.ok[i]]
    train_files = [f for f in train_files if decoded.ok[row[f]]]
    val_files = [f for f in val_files if decoded.ok[row[f]]]
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(split_path, json.dumps({"seed": cfg.seed, "train": train_files, "val": val_files}, indent=0))
    examples = failures + [str(issue) for issue in index.issues]
    bus.emit(DataPrepared(
        image_dir=shown(index.root), num_images=len(index), num_train=len(train_files), num_val=len(val_files),
        num_without_targets=index.num_without_targets, num_label_issues=len(index.issues),
        num_decode_failures=len(failures), from_cache=decoded.from_cache, examples=examples[:MAX_REPORTED_ISSUES],
    ))
    if not train_files:
        raise DataError(f"--image-dir {cfg.image_dir}: no training image could be decoded")
    augment = load_augment_pipeline(cfg.aug_config)
    val_set = _subset(cfg, index, val_files, None, decoded.images, row)
    if teacher_size is None or tuple(teacher_size) == tuple(cfg.img_size):
        return _subset(cfg, index, train_files, augment, decoded.images, row), val_set
    # The teacher sees each augmented sample at its own (larger) size: augment there, resize down
    # for the student. Train images only; decode failures are the same at any size.
    large = decode_all(index.root, train_files, teacher_size, cfg.resize_interpolation, _cache_dir(cfg),
                       max_pixels=cfg.max_image_pixels, follow_symlinks=cfg.follow_symlinks)
    return _subset(cfg, index, train_files, augment, large.images, {f: i for i, f in enumerate(train_files)},
                   student_size=cfg.img_size), val_set


def _subset(cfg: RunConfig, index: Any, files: list[str], augment: Any, images: np.ndarray, row_of: dict[str, int],
            student_size: tuple[int, int] | None = None) -> CachedDetectionDataset:
    position = {name: i for i, name in enumerate(index.files)}
    return CachedDetectionDataset(
        images[[row_of[f] for f in files]], [index.boxes[position[f]] for f in files],
        [index.labels[position[f]] for f in files], augment=augment, seed=cfg.seed,
        student_size=student_size, interpolation=cfg.resize_interpolation, names=files,
    )


def make_loaders(cfg: RunConfig, train_set: CachedDetectionDataset, val_set: CachedDetectionDataset,
                 device: torch.device, dist: DistContext) -> tuple[DataLoader, EpochShuffleSampler, DataLoader]:
    """A process of a DDP job gets its shard of every epoch (--batch-size is per process)."""
    if dist.enabled:
        sampler = EpochTaggedDistributedSampler(train_set, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed)
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
