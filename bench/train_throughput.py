#!/usr/bin/env python3
"""Training throughput of the `cnn` preset at 64x64: UHD's engine vs. a per-access-decoding baseline.

    .venv/bin/python bench/train_throughput.py                 # full run (~100 s on an idle 2-core machine)
    .venv/bin/python bench/train_throughput.py --quick         # smoke run (~30 s)
    .venv/bin/python bench/train_throughput.py --json out.json # also write every sample as JSON
    .venv/bin/python bench/train_throughput.py --wait-idle 120 # on a shared machine: sample only when quiet

What is measured (images/s = training images pushed through a full optimizer step per second):

1. ``steps only``  -- in-memory, pre-augmented, pre-collated batches: uint8->float, CenterNet target
   building (``head.build_targets``), forward, loss, backward, grad clip, AdamW, LR schedule, EMA.
2. ``warm epochs`` -- ``Trainer.run()`` with the decode cache already on disk, default augmentation,
   num_workers 0 and 2. Timed by the trainer's own ``EpochEnded.seconds`` (the epoch loop only:
   no eval, no checkpoint); epoch 1 of each run is excluded (worker start-up, allocator warm-up).
3. ``cold first epoch`` -- ``Trainer.run()`` with an empty decode cache: from ``run()`` to the end
   of epoch 1, i.e. label scan + JPEG decode/resize of every image (train and val) + cache write +
   model build + the first epoch. JPEG files are read once beforehand so the OS page cache is warm
   for both sides (this measures decoding, not the disk).
4. ``baseline``    -- what the original tool did: a torch ``Dataset`` that on every access opens the
   JPEG with PIL, converts to RGB, resizes to 64x64 (bilinear), randomly flips, converts to a float
   tensor and builds CenterNet targets with per-box Python loops; ``DataLoader(num_workers=2,
   batch_size=64, shuffle=True)`` (non-persistent workers, as in the original) feeding the SAME
   model, loss, AdamW, grad clip, schedule and EMA step. Each epoch is one sample.

Every number is the median of >= 3 samples (min and max are reported too). The samples are taken in
interleaved rounds (one of each row per round), so a slow minute of a virtual machine does not land
on one row only. Each row also reports how many cores OTHER processes used meanwhile: on 2 cores a
single busy neighbour makes torch's two OpenMP threads wait on each other and a step ~10x slower, so
any row with noticeable other load is not a measurement of this code. No part of this script
asserts on timings; it only reports them.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from machine import cpu_model, usable_cores
from uhd_core.augment import build_augment_pipeline
from uhd_core.config import RunConfig, build_config
from uhd_core.data.dataset import (
    CachedDetectionDataset,
    EpochShuffleSampler,
    collate_detection,
    decode_all,
    images_to_input,
    scan_yolo_folder,
    split_files,
)
from uhd_core.engine.api import create_trainer
from uhd_core.engine.ema import ModelEMA
from uhd_core.engine.events import DataPrepared, EpochEnded, EvalFinished, Event, RunStarted
from uhd_core.engine.trainer import cosine_lr_lambda
from uhd_core.models.detector import build_detector

PRESET = "cnn"
DEFAULT_DATA = Path("/work/shared/data/coco17val_person_dev/obj_train_data")
#: The original tool's end-to-end speed on this machine type (2 cores), and the target multiple.
ORIGINAL_IMGS_PER_S = 140.0
TARGET_SPEEDUP = 10.0
#: Fixed per-image target slots in the baseline (CenterNet's ``max_objs``; this set has <= 13 per image).
BASELINE_MAX_OBJS = 32


# ------------------------------------------------------------------------------------------------
# Statistics and reporting

@dataclass
class Measurement:
    key: str
    label: str
    setting: str
    notes: str = ""
    samples: list[float] = field(default_factory=list)  # images/s
    sample_extras: list[dict[str, Any]] = field(default_factory=list)  # per sample
    other_load: list[float] = field(default_factory=list)  # cores used by other processes, per sample

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def extra_median(self, name: str) -> float:
        return statistics.median(e[name] for e in self.sample_extras)

    def to_dict(self) -> dict[str, Any]:
        extras: dict[str, list[Any]] = {}
        for e in self.sample_extras:
            for k, v in e.items():
                extras.setdefault(k, []).append(round(v, 3) if isinstance(v, float) else v)
        return {
            "label": self.label, "setting": self.setting, "unit": "images/s",
            "median": round(self.median, 1), "min": round(min(self.samples), 1), "max": round(max(self.samples), 1),
            "samples": [round(v, 1) for v in self.samples], "notes": self.notes,
            "other_processes_cores": [round(v, 2) for v in self.other_load], "per_sample": extras,
        }


def machine_info() -> dict[str, Any]:
    import cv2

    return {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": Image.__version__,
    }


class CpuMonitor:
    """How many cores OTHER processes kept busy while a measurement ran (from /proc/stat minus our own
    CPU time, children included). The numbers are only meaningful on a machine nobody else is using."""

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float]:
        busy = float("nan")
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
            # user nice system idle iowait irq softirq steal ...: busy = everything but idle/iowait/steal
            busy = (sum(fields[:8]) - fields[3] - fields[4] - fields[7]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            pass
        t = os.times()
        own = t.user + t.system + t.children_user + t.children_system
        try:
            import psutil

            for child in psutil.Process().children(recursive=True):  # live data-loader workers
                with contextlib.suppress(psutil.Error):
                    ct = child.cpu_times()
                    own += ct.user + ct.system
        except ImportError:  # pragma: no cover - psutil is a dependency
            pass
        return time.perf_counter(), busy, own

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float:
        """Average number of cores used by other processes since start()."""
        assert self._start is not None
        t1, busy1, own1 = self._sample()
        t0, busy0, own0 = self._start
        return max(0.0, ((busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9))


def wait_for_idle(max_seconds: float, threshold: float = 0.2, window: float = 3.0) -> float:
    """Block until other processes use < `threshold` cores over `window` s (or `max_seconds` pass).

    Returns the other load measured last (cores)."""
    deadline = time.perf_counter() + max_seconds
    while True:
        monitor = CpuMonitor()
        monitor.start()
        time.sleep(window)
        load = monitor.stop()
        if load < threshold or time.perf_counter() >= deadline:
            return load
        log(f"  waiting for an idle machine: other processes use {load:.2f} cores ...")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# The one training step both sides share (mirrors Trainer._run's inner loop, fp32, no GradScaler)

class StepRunner:
    def __init__(self, cfg: RunConfig, total_steps: int, channels_last: bool = True) -> None:
        torch.manual_seed(cfg.seed)
        self.cfg = cfg
        # UHD trains in channels-last memory (as Trainer does); the baseline keeps the plain NCHW
        # layout a straightforward implementation (and the original) uses.
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = build_detector(cfg).to(memory_format=fmt)
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_lr_lambda(total_steps))
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.use_ema else None
        with torch.no_grad():
            out = self.model(torch.zeros(1, 3, *cfg.img_size))
        self.feature_hw = tuple(out["hm"].shape[-2:])

    def step(self, x: torch.Tensor, boxes: torch.Tensor | None = None, labels: torch.Tensor | None = None,
             targets: dict[str, Any] | None = None) -> torch.Tensor:
        outputs = self.model(x)
        if targets is None:
            targets = self.model.head.build_targets(boxes, labels, tuple(outputs["hm"].shape[-2:]))
        losses = self.model.head.loss(outputs, targets)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()}")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()


# ------------------------------------------------------------------------------------------------
# Samplers: each `sample()` returns (images/s, extras for that sample). main() interleaves them in
# rounds (steps, warm w0, warm w2, cold, baseline, steps, ...) so slow drifts of a shared/virtual
# machine hit every row alike instead of whichever ran during the slow minute.

def training_files(cfg: RunConfig, data_dir: Path) -> tuple[Any, list[str], list[str]]:
    """The folder index, the trainer's training files and every file it decodes (train + val)."""
    index = scan_yolo_folder(data_dir, cfg.classes)
    train_files, val_files = split_files(index.files, cfg.train_split, cfg.val_split, cfg.seed)
    return index, train_files, sorted(set(train_files) | set(val_files))

def uhd_train_dataset(cfg: RunConfig, data_dir: Path, cache_dir: Path) -> CachedDetectionDataset:
    """The training split as the Trainer builds it: decoded once, cached, default augmentation."""
    index, train_files, used = training_files(cfg, data_dir)
    decoded = decode_all(index.root, used, cfg.img_size, cfg.resize_interpolation, cache_dir)
    row = {name: i for i, name in enumerate(used)}
    pos = {name: i for i, name in enumerate(index.files)}
    return CachedDetectionDataset(
        decoded.images[[row[f] for f in train_files]], [index.boxes[pos[f]] for f in train_files],
        [index.labels[pos[f]] for f in train_files], build_augment_pipeline(cfg.aug_config), cfg.seed)



class StepsOnly:
    """(1) In-memory, pre-augmented, pre-collated batches through StepRunner.step (the trainer's step)."""

    key, label = "steps_only", "steps only (in-memory batches)"

    def __init__(self, cfg: RunConfig, data_dir: Path, cache_dir: Path, steps: int) -> None:
        dataset = uhd_train_dataset(cfg, data_dir, cache_dir)
        loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=EpochShuffleSampler(len(dataset), cfg.seed),
                            collate_fn=collate_detection, num_workers=0, drop_last=True)
        self.batches = list(loader)  # one augmented epoch, in memory
        self.device = torch.device("cpu")
        self.runner = StepRunner(cfg, total_steps=100_000)
        self.steps = steps
        self.setting = f"batch {cfg.batch_size}, 1 process, {torch.get_num_threads()} torch thread" + ("s" if torch.get_num_threads() != 1 else "")
        self.notes = f"{steps} steps per sample; targets+fwd+loss+bwd+clip+AdamW+EMA"
        self.run(5)  # warm-up

    def run(self, n: int) -> float:
        t0 = time.perf_counter()
        imgs = 0
        for i in range(n):
            batch = self.batches[i % len(self.batches)]
            x = images_to_input(batch.images, self.device)
            self.runner.step(x, batch.boxes, batch.labels)
            imgs += x.shape[0]
        return imgs / (time.perf_counter() - t0)

    def sample(self, r: int) -> tuple[float, dict[str, Any]]:
        return self.run(self.steps), {}

    def one_thread(self, repeats: int) -> list[float]:
        """The same loop with one intra-op thread (what the main process effectively gets when a
        data-loader worker or another process occupies the second core)."""
        threads = torch.get_num_threads()
        if threads == 1:
            return []
        torch.set_num_threads(1)
        try:
            self.run(2)
            return [self.run(max(self.steps // 2, 5)) for _ in range(repeats)]
        finally:
            torch.set_num_threads(threads)

    def phases(self, steps: int) -> dict[str, float]:
        """Mean ms per step of each part of StepRunner.step, timed separately (CPU: nothing async)."""
        names = ("input", "forward", "targets", "loss", "backward", "clip", "adamw+sched", "ema")
        totals = dict.fromkeys(names, 0.0)
        runner = self.runner
        model, cfg = runner.model, runner.cfg
        for i in range(steps):
            batch = self.batches[i % len(self.batches)]
            t = [time.perf_counter()]
            x = images_to_input(batch.images, self.device)
            t.append(time.perf_counter())
            outputs = model(x)
            t.append(time.perf_counter())
            targets = model.head.build_targets(batch.boxes, batch.labels, tuple(outputs["hm"].shape[-2:]))
            t.append(time.perf_counter())
            loss = model.head.loss(outputs, targets)["loss"]
            bool(torch.isfinite(loss))
            t.append(time.perf_counter())
            runner.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.perf_counter())
            if cfg.grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            t.append(time.perf_counter())
            runner.optimizer.step()
            runner.scheduler.step()
            t.append(time.perf_counter())
            if runner.ema is not None:
                runner.ema.update(model)
            t.append(time.perf_counter())
            for name, t_a, t_b in zip(names, t, t[1:]):
                totals[name] += t_b - t_a
        return {name: round(1000 * v / steps, 3) for name, v in totals.items()}


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []

    def __call__(self, event: Event) -> None:
        self.events.append((time.perf_counter(), event))

    def of(self, kind: type) -> list[tuple[float, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


def run_trainer(data_dir: Path, runs_dir: Path, cache_dir: Path, exp_name: str, epochs: int,
                num_workers: int) -> tuple[float, Recorder]:
    """One real `Trainer.run()` (via create_trainer, as the CLI does); returns its start time and events."""
    overrides = {
        "image_dir": str(data_dir), "epochs": epochs, "runs_dir": str(runs_dir), "exp_name": exp_name,
        "exist_ok": True, "cache_dir": str(cache_dir), "num_workers": num_workers, "device": "cpu",
        "eval_interval": 10**6,  # evaluates only after the last epoch, outside the epoch timings
    }
    recorder = Recorder()
    trainer, writers = create_trainer(PRESET, overrides, [recorder], tensorboard=False)
    try:
        t0 = time.perf_counter()
        trainer.run()
    finally:
        for writer in writers:
            writer.close()
        del trainer
        gc.collect()  # reap the run's data-loader workers before the next measurement
    return t0, recorder


def epoch_images(recorder: Recorder) -> int:
    started = recorder.of(RunStarted)[0][1]
    return started.steps_per_epoch * started.batch_size  # drop_last=True: every epoch is full batches


class WarmEpochs:
    """(2) Trainer.run() on a warm decode cache; the sample is epochs 2..E of one run."""

    def __init__(self, data_dir: Path, tmp: Path, cache_dir: Path, num_workers: int, epochs: int) -> None:
        self.data_dir, self.tmp, self.cache_dir = data_dir, tmp, cache_dir
        self.num_workers, self.epochs = num_workers, epochs
        self.key, self.label = f"warm_w{num_workers}", "whole epochs, warm cache"
        self.setting = f"num_workers={num_workers}"
        self.notes = f"1 run of {epochs} epochs per sample (epoch 1 excluded); default aug"

    def sample(self, r: int) -> tuple[float, dict[str, Any]]:
        _, rec = run_trainer(self.data_dir, self.tmp / "runs", self.cache_dir, f"{self.key}_{r}", self.epochs,
                             self.num_workers)
        if not rec.of(DataPrepared)[0][1].from_cache:
            raise RuntimeError("warm run did not hit the decode cache (cache key mismatch?)")
        ends = [e for _, e in rec.of(EpochEnded)]
        n = epoch_images(rec)
        warm = ends[1:]
        started_t, finished_t = rec.of(RunStarted)[0][0], rec.events[-1][0]
        return n * len(warm) / sum(e.seconds for e in warm), {
            "first_epoch_imgs_per_s": ends[0].imgs_per_s,
            "run_incl_checkpoints_eval_imgs_per_s": n * len(ends) / (finished_t - started_t),
            "final_eval_seconds": sum(e.seconds for _, e in rec.of(EvalFinished)),
            "images_per_epoch": n,
        }


class ColdFirstEpoch:
    """(3) Trainer.run() with an empty decode cache: run() start -> end of epoch 1."""

    def __init__(self, data_dir: Path, tmp: Path, num_workers: int) -> None:
        self.data_dir, self.tmp, self.num_workers = data_dir, tmp, num_workers
        self.key, self.label = f"cold_w{num_workers}", "first epoch, cold decode cache"
        self.setting = f"num_workers={num_workers}"
        self.notes = "run() start -> end of epoch 1, incl. scanning labels and decoding every JPEG once"

    def sample(self, r: int) -> tuple[float, dict[str, Any]]:
        cache = self.tmp / f"cold_cache_{r}"
        t0, rec = run_trainer(self.data_dir, self.tmp / "runs", cache, f"cold_{r}", 1, self.num_workers)
        t_prep, prepared = rec.of(DataPrepared)[0]
        if prepared.from_cache:
            raise RuntimeError("cold run found a decode cache")
        num_images = prepared.num_train + prepared.num_val
        t_end, end = rec.of(EpochEnded)[0]
        return epoch_images(rec) / (t_end - t0), {
            "scan_decode_seconds": t_prep - t0,
            "decoded_images": num_images,
            "decode_imgs_per_s": num_images / (t_prep - t0),
            "epoch_loop_seconds": end.seconds,
        }


# ------------------------------------------------------------------------------------------------
# (4) the baseline: decode + resize + targets on every access

def py_gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's reference gaussian_radius (scalar Python)."""
    a1, b1 = 1.0, height + width
    c1 = width * height * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(max(b1 ** 2 - 4 * a1 * c1, 0.0))) / 2
    a2, b2 = 4.0, 2 * (height + width)
    c2 = (1 - min_overlap) * width * height
    r2 = (b2 + math.sqrt(max(b2 ** 2 - 4 * a2 * c2, 0.0))) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (height + width)
    c3 = (min_overlap - 1) * width * height
    r3 = (b3 + math.sqrt(max(b3 ** 2 - 4 * a3 * c3, 0.0))) / 2
    return min(r1, r2, r3)


def gaussian_2d(diameter: int, sigma: float) -> np.ndarray:
    m = (diameter - 1) / 2.0
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    g = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    g[g < np.finfo(g.dtype).eps * g.max()] = 0
    return g


def draw_gaussian(heatmap: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """CenterNet's draw_umich_gaussian: max-merge a (2r+1)^2 Gaussian centred at (cx, cy)."""
    diameter = 2 * radius + 1
    gaussian = gaussian_2d(diameter, sigma=diameter / 6)
    height, width = heatmap.shape
    left, right = min(cx, radius), min(width - cx, radius + 1)
    top, bottom = min(cy, radius), min(height - cy, radius + 1)
    region = heatmap[cy - top:cy + bottom, cx - left:cx + right]
    patch = gaussian[radius - top:radius + bottom, radius - left:radius + right]
    if min(patch.shape) > 0 and min(region.shape) > 0:
        np.maximum(region, patch, out=region)


class BaselineDataset(Dataset):
    """The original tool's style: everything happens in __getitem__, on every access."""

    def __init__(self, root: Path, files: Sequence[str], img_size: tuple[int, int], feature_hw: tuple[int, int],
                 num_classes: int, flip_prob: float = 0.5) -> None:
        self.root = Path(root)
        self.files = list(files)
        self.img_size = img_size
        self.feature_hw = feature_hw
        self.num_classes = num_classes
        self.flip_prob = flip_prob
        self.labels: list[list[tuple[int, float, float, float, float]]] = []
        for name in self.files:  # labels parsed once (the generous reading of the original)
            rows = []
            for line in (self.root / name).with_suffix(".txt").read_text().splitlines():
                parts = line.split()
                if len(parts) == 5 and int(parts[0]) == 0:
                    rows.append((0, *map(float, parts[1:])))
            self.labels.append(rows)

    def __len__(self) -> int:
        return len(self.files)

    def load_image(self, i: int) -> Image.Image:
        h, w = self.img_size
        img = Image.open(self.root / self.files[i]).convert("RGB")
        return img.resize((w, h), Image.BILINEAR)

    def build_targets(self, boxes: list[tuple[int, float, float, float, float]]) -> dict[str, torch.Tensor]:
        fh, fw = self.feature_hw
        hm = np.zeros((self.num_classes, fh, fw), dtype=np.float32)
        off = np.zeros((BASELINE_MAX_OBJS, 2), dtype=np.float32)
        wh = np.zeros((BASELINE_MAX_OBJS, 2), dtype=np.float32)
        cell = np.zeros(BASELINE_MAX_OBJS, dtype=np.int64)
        mask = np.zeros(BASELINE_MAX_OBJS, dtype=bool)
        for k, (cls, cx, cy, bw, bh) in enumerate(boxes[:BASELINE_MAX_OBJS]):
            cx, cy, bw, bh = cx * fw, cy * fh, bw * fw, bh * fh
            ix = min(max(int(math.floor(cx)), 0), fw - 1)
            iy = min(max(int(math.floor(cy)), 0), fh - 1)
            radius = max(0, int(py_gaussian_radius(bh, bw)))
            draw_gaussian(hm[cls], ix, iy, radius)
            off[k, 0], off[k, 1] = cx - ix, cy - iy
            wh[k, 0], wh[k, 1] = bw, bh
            cell[k] = iy * fw + ix
            mask[k] = True
        return {"hm": torch.from_numpy(hm), "off": torch.from_numpy(off), "wh": torch.from_numpy(wh),
                "cell": torch.from_numpy(cell), "mask": torch.from_numpy(mask)}

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        img = self.load_image(i)
        boxes = list(self.labels[i])
        if random.random() < self.flip_prob:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
            boxes = [(c, 1.0 - cx, cy, bw, bh) for c, cx, cy, bw, bh in boxes]
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)  # ToTensor
        return x, self.build_targets(boxes)


def baseline_dataset(cfg: RunConfig, data_dir: Path, feature_hw: tuple[int, int]) -> BaselineDataset:
    _, train_files, _ = training_files(cfg, data_dir)  # the same training images as the trainer
    return BaselineDataset(data_dir, train_files, cfg.img_size, feature_hw, cfg.num_classes)


class BaselineEpochs:
    """(4) The original's data path feeding the same step; one whole epoch per sample."""

    key, label = "baseline", "baseline: PIL decode+resize+targets per access"

    def __init__(self, cfg: RunConfig, data_dir: Path, num_workers: int = 2) -> None:
        self.runner = StepRunner(cfg, total_steps=100_000, channels_last=False)
        self.dataset = baseline_dataset(cfg, data_dir, self.runner.feature_hw)
        # Non-persistent workers (the DataLoader default the original used): they restart every epoch.
        self.loader = DataLoader(self.dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=num_workers,
                                 drop_last=True)
        self.setting = f"DataLoader num_workers={num_workers}"
        self.notes = "1 epoch per sample (workers restart every epoch, as in the original)"
        # Warm the step (allocator, kernels) on one batch built in-process, so the first sample is not penalised.
        x, targets = torch.utils.data.default_collate([self.dataset[i] for i in range(cfg.batch_size)])
        for _ in range(3):
            self.runner.step(x, targets=targets)

    def sample(self, r: int) -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        imgs = 0
        for x, targets in self.loader:
            self.runner.step(x, targets=targets)
            imgs += x.shape[0]
        dt = time.perf_counter() - t0
        return imgs / dt, {"epoch_seconds": dt, "images_per_epoch": imgs}


def baseline_breakdown(cfg: RunConfig, data_dir: Path, feature_hw: tuple[int, int], n: int) -> dict[str, float]:
    """Single-process ms/image of the baseline's __getitem__ parts (no training step)."""
    ds = baseline_dataset(cfg, data_dir, feature_hw)
    n = min(n, len(ds))
    parts = {"pil_decode_resize": 0.0, "flip_to_tensor": 0.0, "targets": 0.0}
    for i in range(n):
        t0 = time.perf_counter()
        img = ds.load_image(i)
        t1 = time.perf_counter()
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
        torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
        t2 = time.perf_counter()
        ds.build_targets(ds.labels[i])
        t3 = time.perf_counter()
        parts["pil_decode_resize"] += t1 - t0
        parts["flip_to_tensor"] += t2 - t1
        parts["targets"] += t3 - t2
    return {k: round(1000 * v / n, 3) for k, v in parts.items()}


def uhd_data_only(cfg: RunConfig, data_dir: Path, cache_dir: Path, epochs: int) -> float:
    """images/s of the UHD data pipeline alone (augment + collate, 1 process), no training step."""
    dataset = uhd_train_dataset(cfg, data_dir, cache_dir)
    sampler = EpochShuffleSampler(len(dataset), cfg.seed)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate_detection,
                        num_workers=0, drop_last=True)
    t0 = time.perf_counter()
    imgs = 0
    for epoch in range(1, epochs + 1):
        sampler.set_epoch(epoch)
        for batch in loader:
            imgs += batch.images.shape[0]
    return imgs / (time.perf_counter() - t0)


def check_baseline_targets(cfg: RunConfig, data_dir: Path, feature_hw: tuple[int, int]) -> float:
    """Max |difference| between the baseline's heatmaps and head.build_targets on the same boxes."""
    ds = baseline_dataset(cfg, data_dir, feature_hw)
    head = build_detector(cfg).head
    worst = 0.0
    for i in range(0, len(ds), max(1, len(ds) // 64)):
        rows = ds.labels[i]
        boxes = torch.tensor([r[1:] for r in rows], dtype=torch.float32)[None]
        labels = torch.tensor([r[0] for r in rows], dtype=torch.int64)[None]
        ours = head.build_targets(boxes, labels, feature_hw)["hm"][0]
        worst = max(worst, float((ours - ds.build_targets(rows)["hm"]).abs().max()))
    return worst


# ------------------------------------------------------------------------------------------------

def markdown_table(results: list[Measurement], baseline: Measurement) -> str:
    lines = ["| measurement | setting | median img/s | min | max | n | x baseline | other load | notes |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for m in results:
        lines.append(f"| {m.label} | {m.setting} | {m.median:.0f} | {min(m.samples):.0f} | {max(m.samples):.0f} | "
                     f"{len(m.samples)} | {m.median / baseline.median:.1f}x | {max(m.other_load):.2f} | {m.notes} |")
    return "\n".join(lines)


def warm_page_cache(root: Path) -> None:
    for path in sorted(root.iterdir()):
        if path.is_file():
            path.read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="YOLO folder (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="fewer steps/epochs: a < 60 s smoke run")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results here")
    parser.add_argument("--repeats", type=int, default=None,
                        help="samples per measurement (default 5, --quick 3; use >= 3)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the training process (default: torch's choice)")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                        help="before each sample wait up to SECONDS for other processes to go quiet "
                             "(for shared machines; default 0 = don't wait)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        repeats, steps, warm_epochs, data_epochs, breakdown_n = 3, 10, 3, 1, 32
    else:
        repeats, steps, warm_epochs, data_epochs, breakdown_n = 5, 60, 10, 4, 128
    repeats = max(1, args.repeats or repeats)
    if not args.data.is_dir():
        log(f"error: data folder {args.data} not found (pass --data)")
        return 2

    info = machine_info()
    cfg = build_config(PRESET, {"image_dir": str(args.data), "device": "cpu"})
    log(f"machine: {info['cpu_model']}, {info['usable_cores']} cores, torch {info['torch']} "
        f"({info['torch_threads']} threads), {info['platform']}")
    load_start = os.getloadavg()
    t_start = time.perf_counter()
    waited = 0.0
    with tempfile.TemporaryDirectory(prefix="uhd_bench_") as tmp_name:
        tmp = Path(tmp_name)
        log("setup: reading the JPEGs once (OS page cache), building the decode cache, one untimed warm-up run ...")
        warm_page_cache(args.data)
        warm_cache = tmp / "warm_cache"
        index, _, used = training_files(cfg, args.data)
        decode_all(index.root, used, cfg.img_size, cfg.resize_interpolation, warm_cache)
        run_trainer(args.data, tmp / "runs", warm_cache, "warmup", 1, 0)  # lazy imports, allocator, first eval

        samplers = [StepsOnly(cfg, args.data, warm_cache, steps),
                    WarmEpochs(args.data, tmp, warm_cache, 0, warm_epochs),
                    WarmEpochs(args.data, tmp, warm_cache, 2, warm_epochs),
                    ColdFirstEpoch(args.data, tmp, cfg.num_workers),
                    BaselineEpochs(cfg, args.data)]
        results = [Measurement(s.key, s.label, s.setting, s.notes) for s in samplers]
        for r in range(repeats):
            log(f"round {r + 1}/{repeats}: " + ", ".join(s.key for s in samplers))
            for sampler, m in zip(samplers, results):
                if args.wait_idle > 0:
                    t_wait = time.perf_counter()
                    wait_for_idle(args.wait_idle)
                    waited += time.perf_counter() - t_wait
                monitor = CpuMonitor()
                monitor.start()
                value, extras = sampler.sample(r)
                m.other_load.append(monitor.stop())
                m.samples.append(value)
                m.sample_extras.append(extras)

        log("details: 1-thread steps, step phases, data pipeline alone, baseline __getitem__ parts ...")
        steps_sampler = samplers[0]
        one_thread = steps_sampler.one_thread(3)
        phases = steps_sampler.phases(max(steps // 2, 10))
        data_only = uhd_data_only(cfg, args.data, warm_cache, data_epochs)
        feature_hw = steps_sampler.runner.feature_hw
        breakdown = baseline_breakdown(cfg, args.data, feature_hw, breakdown_n)
        target_diff = check_baseline_targets(cfg, args.data, feature_hw)
        del samplers
        gc.collect()
    total_s = time.perf_counter() - t_start

    by_key = {m.key: m for m in results}
    steps_m, w0, w2, baseline = by_key["steps_only"], by_key["warm_w0"], by_key["warm_w2"], by_key["baseline"]
    cold = by_key[f"cold_w{cfg.num_workers}"]
    best_warm = max((w0, w2), key=lambda m: m.median)
    busiest = max(max(m.other_load) for m in results)

    out: list[str] = []
    say = out.append
    say(f"# UHD training throughput: preset `{PRESET}` at {cfg.img_size[0]}x{cfg.img_size[1]}, "
        f"batch {cfg.batch_size}\n")
    say(f"- machine: {info['platform']}; CPU {info['cpu_model']}; {info['usable_cores']} usable cores "
        f"(cpu_count {info['cpu_count']}); python {info['python']}; torch {info['torch']} with "
        f"{info['torch_threads']} threads; numpy {info['numpy']}, opencv {info['opencv']}, pillow {info['pillow']}")
    say(f"- data: {args.data}: {len(used)} images, train split {w0.sample_extras[0]['images_per_epoch']} "
        "images/epoch (drop_last)")
    say(f"- mode: {'quick' if args.quick else 'full'}, {repeats} samples per row taken in interleaved rounds; "
        f"total time {total_s:.0f} s" + (f" (of which {waited:.0f} s waiting for an idle machine)" if waited >= 1 else ""))
    say("")
    say(markdown_table(results, baseline))
    say("")
    say("- other load = the most cores other processes kept busy during any one sample of that row "
        f"(load average at start {load_start[0]:.2f}, at end {os.getloadavg()[0]:.2f})")
    if busiest > 0.25:
        say(f"- **WARNING: other processes used up to {busiest:.2f} of {info['usable_cores']} cores during this "
            "benchmark; the numbers above are contaminated. Re-run on an idle machine (or use --wait-idle).**")
    say(f"- **uhd/baseline (best warm whole-epoch setting, {best_warm.setting}): "
        f"{best_warm.median / baseline.median:.1f}x** ({best_warm.median:.0f} vs {baseline.median:.0f} img/s); "
        f"num_workers=0: {w0.median / baseline.median:.1f}x, num_workers=2: {w2.median / baseline.median:.1f}x")
    say(f"- uhd/baseline, cold first epoch incl. decoding ({cold.setting}): {cold.median / baseline.median:.1f}x")
    say(f"- vs. the original's ~{ORIGINAL_IMGS_PER_S:.0f} img/s: {best_warm.median / ORIGINAL_IMGS_PER_S:.1f}x "
        f"(target >= {TARGET_SPEEDUP:.0f}x = {TARGET_SPEEDUP * ORIGINAL_IMGS_PER_S:.0f} img/s); this run's baseline "
        f"reimplementation reaches {baseline.median / ORIGINAL_IMGS_PER_S:.1f}x the original")
    say(f"- num_workers=2 vs 0, warm epochs: {w2.median / w0.median:.2f}x; epoch 1 of a warm run (worker start-up): "
        f"w0 {w0.extra_median('first_epoch_imgs_per_s'):.0f}, w2 {w2.extra_median('first_epoch_imgs_per_s'):.0f} img/s; "
        f"whole run incl. per-epoch checkpoints and the final eval: w0 "
        f"{w0.extra_median('run_incl_checkpoints_eval_imgs_per_s'):.0f}, w2 "
        f"{w2.extra_median('run_incl_checkpoints_eval_imgs_per_s'):.0f} img/s "
        f"(the final eval on the val split takes {w0.extra_median('final_eval_seconds'):.2f} s)")
    say(f"- cold start: label scan + decoding {cold.sample_extras[0]['decoded_images']} JPEGs "
        f"{cold.extra_median('scan_decode_seconds'):.2f} s ({cold.extra_median('decode_imgs_per_s'):.0f} img/s); "
        f"then the epoch-1 loop {cold.extra_median('epoch_loop_seconds'):.2f} s")
    say(f"- where uhd's time goes: steps alone {steps_m.median:.0f} img/s"
        + (f" ({statistics.median(one_thread):.0f} with 1 torch thread)" if one_thread else "")
        + f"; data pipeline alone (cached images, default aug + collate, 1 process) {data_only:.0f} img/s")
    say(f"- one step of {cfg.batch_size} images, ms: " + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
        + f" (sum {sum(phases.values()):.1f})")
    say(f"- baseline __getitem__, 1 process, ms/image: PIL open+RGB+resize {breakdown['pil_decode_resize']:.2f}, "
        f"flip+to-tensor {breakdown['flip_to_tensor']:.3f}, targets {breakdown['targets']:.3f}")
    say(f"- baseline heatmaps vs head.build_targets on the same boxes: max |diff| {target_diff:.1e}")
    print("\n".join(out))

    if args.json is not None:
        payload = {
            "benchmark": "train_throughput", "preset": PRESET, "img_size": list(cfg.img_size),
            "batch_size": cfg.batch_size, "mode": "quick" if args.quick else "full", "repeats": repeats,
            "data": str(args.data), "machine": info, "total_seconds": round(total_s, 1),
            "waited_for_idle_seconds": round(waited, 1),
            "results": {m.key: m.to_dict() for m in results},
            "ratio_uhd_over_baseline": {
                "best_warm": round(best_warm.median / baseline.median, 2), "best_warm_setting": best_warm.setting,
                "warm_w0": round(w0.median / baseline.median, 2), "warm_w2": round(w2.median / baseline.median, 2),
                "cold_first_epoch": round(cold.median / baseline.median, 2),
                "steps_only": round(steps_m.median / baseline.median, 2),
            },
            "vs_original_imgs_per_s": {"original": ORIGINAL_IMGS_PER_S,
                                       "best_warm": round(best_warm.median / ORIGINAL_IMGS_PER_S, 2)},
            "steps_only_one_thread_imgs_per_s": [round(v, 1) for v in one_thread],
            "step_phase_ms": phases,
            "uhd_data_pipeline_only_imgs_per_s": round(data_only, 1),
            "baseline_getitem_ms_per_image": breakdown,
            "baseline_heatmap_max_abs_diff_vs_build_targets": target_diff,
            "report_markdown": "\n".join(out),
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
