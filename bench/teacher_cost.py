#!/usr/bin/env python3
"""What a ViT teacher adds to each training step of the distillation presets (batch 64, CPU).

    .venv/bin/python bench/teacher_cost.py                 # all teachers, fp32 and bf16 autocast
    .venv/bin/python bench/teacher_cost.py --repeats 3 --archs vit_tiny

Per teacher arch and input size, the median (over --repeats, after one warm-up) of one no-grad
forward of a batch of 64 images, in fp32 and under bf16 autocast (the presets set --use-amp, which
runs the teacher in bf16 on CPU). For scale, the same for one full training step of the
`cnn_anchor_dino` student alone (forward, loss, backward, AdamW) on the same batch. Teachers have
random weights (bench/make_teacher_file.py): cost does not depend on the values. Run on an idle
machine; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import machine_info  # noqa: E402

from uhd_core.config import build_config  # noqa: E402
from uhd_core.distill.vit import VIT_TEACHER_ARCHS, build_vit_teacher  # noqa: E402
from uhd_core.models.detector import build_detector  # noqa: E402

BATCH = 64


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (allocator, oneDNN kernel selection)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def teacher_seconds(arch: str, size: int, bf16: bool, repeats: int) -> float:
    teacher = build_vit_teacher(arch).eval().requires_grad_(False)
    x = torch.rand(BATCH, 3, size, size)

    def forward() -> None:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            teacher(x)

    return median_seconds(forward, repeats)


def student_step_seconds(repeats: int) -> float:
    cfg = build_config("cnn_anchor_dino", {"anchors": "0.1,0.2 0.2,0.4 0.3,0.6 0.5,0.7 0.8,0.9", "auto_anchors": False})
    model = build_detector(cfg).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.rand(BATCH, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    boxes = torch.rand(BATCH, 4, 4) * 0.4 + 0.3
    labels = torch.zeros(BATCH, 4, dtype=torch.long)

    def step() -> None:
        outputs = model(x)
        loss = model.head.loss(outputs, model.head.build_targets(boxes, labels, model.head.output_hw(outputs)))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return median_seconds(step, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", nargs="+", default=list(VIT_TEACHER_ARCHS), choices=list(VIT_TEACHER_ARCHS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 64],
                        help="teacher input sides: 128 = default for a stride-8 student at 64x64, 64 = stride 16")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"machine: {machine_info()}", flush=True)
    rows = [f"| student step alone (`cnn_anchor_dino` CNN, fp32) | 64x64 | {student_step_seconds(args.repeats):.3f} s | |"]
    print(rows[0], flush=True)
    for arch in args.archs:
        for size in args.sizes:
            fp32 = teacher_seconds(arch, size, False, args.repeats)
            bf16 = teacher_seconds(arch, size, True, args.repeats)
            rows.append(f"| {arch} teacher forward | {size}x{size} | {fp32:.3f} s | {bf16:.3f} s |")
            print(rows[-1], flush=True)
    print("\n| per batch of 64 | input | fp32 | bf16 autocast |\n|---|---|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
