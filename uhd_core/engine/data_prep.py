"""The data of a run: the train/val split (kept across --resume), decoding into the cache, the datasets
and loaders, and worker errors surfaced as one line."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
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
    drop_small_boxes,
    split_files,
)
from uhd_core.data.files import shown
from uhd_core.engine.distributed import DistContext, EpochTaggedDistributedSampler
from uhd_core.engine.events import DataPrepared, DecodeProgressed, EventBus, RunWarning
from uhd_core.errors import DataError, TrainingError, first_line
from uhd_core.outputs import atomic_write_text

MAX_REPORTED_ISSUES = 20


@dataclass
class _Folder:
    """One dataset folder of the run: its scan, the files it gives each split (names relative to its
    root) and their decoded images (``row``: name -> index into ``decoded.images``)."""

    index: Any
    train: list[str]
    val: list[str]
    flag: str
    decoded: Any = None
    row: dict[str, int] = field(default_factory=dict)


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


def _folders(cfg: RunConfig, index: Any, extra: list[Any], split_path: Path, resuming: bool) -> list[_Folder]:
    """--image-dir's seeded split, then every --extra-train-dir whole, as training images only. A
    resumed run keeps the extra files its split.json lists (the extra dirs come with its config)."""
    train, val = _train_val_files(cfg, index, split_path, resuming)
    saved: dict[str, list[str]] = {}
    if resuming and split_path.is_file():
        saved = {e["image_dir"]: e["files"] for e in json.loads(split_path.read_text(encoding="utf-8"))
                 .get("extra_train", [])}
    folders = [_Folder(index, train, val, "--image-dir")]
    for folder, extra_index in zip(cfg.extra_train_dirs, extra):
        known = set(extra_index.files)
        files = [f for f in saved[folder] if f in known] if folder in saved else list(extra_index.files)
        folders.append(_Folder(extra_index, files, [], "--extra-train-dir"))
    return folders


def _decode(cfg: RunConfig, index: Any, used: list[str], dist: DistContext, bus: EventBus,
            offset: int = 0, total: int | None = None) -> Any:
    """Decode ``used`` at --img-size through the cache; rank 0 fills it, the other ranks read it.
    Progress counts ``offset + done`` of ``total`` (all folders of the run)."""
    total = len(used) if total is None else total
    step = max(1, total // 50)
    if not dist.is_main:
        dist.barrier()  # wait for rank 0 to fill the decode cache, then read it
    decoded = decode_all(
        index.root, used, cfg.img_size, cfg.resize_interpolation, _cache_dir(cfg),
        progress=lambda done, _n: bus.emit(DecodeProgressed(offset + done, total))
        if (offset + done) % step == 0 or offset + done == total else None,
        max_pixels=cfg.max_image_pixels, follow_symlinks=cfg.follow_symlinks,
    )
    if decoded.cache_warning and dist.is_main:
        bus.emit(RunWarning(decoded.cache_warning))
    if dist.is_main:
        dist.barrier()
    return decoded


def _cache_dir(cfg: RunConfig) -> Path:
    return Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()


def _decode_folders(cfg: RunConfig, folders: list[_Folder], dist: DistContext, bus: EventBus) -> list[str]:
    """Decode every folder's files (each through its own guard and cache entry); drop the undecodable
    ones from the splits and return them as 'path: reason' lines."""
    used = [sorted(set(f.train) | set(f.val)) for f in folders]
    total, offset, failures = sum(map(len, used)), 0, []
    for folder, names in zip(folders, used):
        folder.decoded = _decode(cfg, folder.index, names, dist, bus, offset, total)
        offset += len(names)
        folder.row = {name: i for i, name in enumerate(names)}
        ok = folder.decoded.ok
        failures += [f"{shown(folder.index.root / n)}: {folder.decoded.errors[i]}" for i, n in enumerate(names)
                     if not ok[i]]
        folder.train = [f for f in folder.train if ok[folder.row[f]]]
        folder.val = [f for f in folder.val if ok[folder.row[f]]]
    return failures


def _write_split(cfg: RunConfig, folders: list[_Folder], split_path: Path) -> None:
    """split.json: --image-dir's train/val names and, per --extra-train-dir, the files trained on."""
    main, extra = folders[0], folders[1:]
    record: dict[str, Any] = {"seed": cfg.seed, "train": main.train, "val": main.val}
    if extra:
        record["extra_train"] = [{"image_dir": d, "files": f.train} for d, f in zip(cfg.extra_train_dirs, extra)]
    atomic_write_text(split_path, json.dumps(record, indent=0))


def _data_prepared(cfg: RunConfig, folders: list[_Folder], items: list[Items], failures: list[str]) -> DataPrepared:
    """Counts per folder; ``num_train``: the images trained on (after --min-box-px), all folders."""
    main = folders[0]
    issues = [str(issue) for f in folders for issue in f.index.issues]
    extra = [{"image_dir": shown(f.index.root), "num_images": len(f.index), "num_train": len(it[0]),
              "num_without_targets": f.index.num_without_targets, "num_label_issues": len(f.index.issues),
              "num_decode_failures": int((~f.decoded.ok).sum())} for f, it in zip(folders[1:], items[1:])]
    dropped = (sum(it[4] for it in items), sum(len(f.train) - len(it[0]) for f, it in zip(folders, items)))
    return DataPrepared(
        image_dir=shown(main.index.root), num_images=len(main.index), num_train=sum(len(it[0]) for it in items),
        num_val=len(main.val), num_without_targets=main.index.num_without_targets,
        num_label_issues=len(main.index.issues), num_decode_failures=int((~main.decoded.ok).sum()),
        from_cache=all(f.decoded.from_cache for f in folders), examples=(failures + issues)[:MAX_REPORTED_ISSUES],
        extra_dirs=extra, min_box_px=cfg.min_box_px, num_small_boxes_dropped=dropped[0],
        num_small_images_dropped=dropped[1],
    )


def prepare_data(cfg: RunConfig, index: Any, run_dir: Path, resuming: bool, dist: DistContext, bus: EventBus,
                 teacher_size: tuple[int, int] | None = None,
                 extra: list[Any] | None = None) -> tuple[CachedDetectionDataset, CachedDetectionDataset]:
    """Train and val sets at --img-size from the scanned ``index`` (and ``extra``, the scans of the
    --extra-train-dirs: training images only); writes split.json (rank 0). --min-box-px filters the
    training boxes only. With a ``teacher_size`` that differs, the training images are (also) decoded at
    that size and every training item carries both renditions (see CachedDetectionDataset); validation
    stays student-only."""
    split_path = run_dir / "split.json"
    folders = _folders(cfg, index, list(extra or []), split_path, resuming)
    failures = _decode_folders(cfg, folders, dist, bus)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_split(cfg, folders, split_path)
    per_folder = [_items(f, f.train, f.decoded.images, f.row, cfg, prefix=i > 0) for i, f in enumerate(folders)]
    train = _concat(per_folder)
    bus.emit(_data_prepared(cfg, folders, per_folder, failures))
    if not train[0]:
        why = "could be decoded" if not any(f.train for f in folders) else f"keeps a box of --min-box-px {cfg.min_box_px:g}"
        raise DataError(f"--image-dir {cfg.image_dir}: no training image {why}")  # after DataPrepared: it says why
    augment = load_augment_pipeline(cfg.aug_config)
    main = folders[0]
    val_set = _dataset(cfg, _items(main, main.val, main.decoded.images, main.row, cfg, filter_small=False), None)
    if teacher_size is None or tuple(teacher_size) == tuple(cfg.img_size):
        return _dataset(cfg, train, augment), val_set
    # The teacher sees each augmented sample at its own (larger) size: augment there, resize down
    # for the student. Train images only; decode failures are the same at any size.
    large = []
    for f in folders:
        images = decode_all(f.index.root, f.train, teacher_size, cfg.resize_interpolation, _cache_dir(cfg),
                            max_pixels=cfg.max_image_pixels, follow_symlinks=cfg.follow_symlinks).images
        large.append(_items(f, f.train, images, {n: i for i, n in enumerate(f.train)}, cfg, prefix=f is not main))
    return _dataset(cfg, _concat(large), augment, student_size=cfg.img_size), val_set


Items = tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], list[str], int]


def _items(folder: _Folder, files: list[str], images: np.ndarray, row: dict[str, int], cfg: RunConfig,
           filter_small: bool = True, prefix: bool = False) -> Items:
    """(images (H, W, 3) uint8, boxes (N, 4) cxcywh, labels, names, boxes dropped) of ``files``; with
    ``filter_small``, boxes under --min-box-px go and so do images left without one. ``prefix``: names
    carry the folder (an extra folder's file in an error message)."""
    position = {name: i for i, name in enumerate(folder.index.files)}
    out: Items = ([], [], [], [], 0)
    for name in files:
        boxes, labels = folder.index.boxes[position[name]], folder.index.labels[position[name]]
        if filter_small:
            kept, labels = drop_small_boxes(boxes, labels, cfg.min_box_px, cfg.img_size)
            out = (*out[:4], out[4] + len(boxes) - len(kept))
            boxes = kept
            if len(boxes) == 0:
                continue
        out[0].append(images[row[name]])
        out[1].append(boxes)
        out[2].append(labels)
        out[3].append(str(folder.index.root / name) if prefix else name)
    return out


def _concat(parts: list[Items]) -> Items:
    return ([x for p in parts for x in p[0]], [x for p in parts for x in p[1]], [x for p in parts for x in p[2]],
            [x for p in parts for x in p[3]], sum(p[4] for p in parts))


def _dataset(cfg: RunConfig, items: Items, augment: Any,
             student_size: tuple[int, int] | None = None) -> CachedDetectionDataset:
    images = np.stack(items[0]) if items[0] else np.zeros((0, *cfg.img_size, 3), dtype=np.uint8)
    return CachedDetectionDataset(
        images, items[1], items[2], augment=augment, seed=cfg.seed, student_size=student_size,
        interpolation=cfg.resize_interpolation, names=items[3],
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
