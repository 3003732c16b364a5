#!/usr/bin/env python3
"""Mean time of every augmentation op on real 64x64 training images (`uhd aug-preview`'s op table, at scale).

    .venv/bin/python bench/augment_ops.py                         # all ops, dev images, 5 repeats
    .venv/bin/python bench/augment_ops.py --config uhd/aug.yaml   # the ops of one config, as configured

For each op, the op alone (forced on, its YAML defaults, or the config's parameters) is applied to
every image of the sample (``--n`` dev images decoded and resized as training does; partners of
Mosaic/MixUp/CopyPaste come from the same images); one repeat = one pass over the sample; the table
gives the median over ``--repeats`` of the mean ms per image, 1 thread. A pass of the whole pipeline
(``--config``, else the built-in default) is timed the same way. Run on an idle machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import DEFAULT_DATA, machine_info  # noqa: E402

from uhd_core.augment import AUGMENT_OPS, AugmentPipeline, AugOpSpec, build_augment_pipeline  # noqa: E402
from uhd_core.augment.pipeline import OpTrace  # noqa: E402
from uhd_core.augment.preview import load_preview_samples  # noqa: E402


def time_pass(pipeline: AugmentPipeline, samples, force: str | None, seed: int) -> float:
    """Mean ms per image of one pass; with ``force`` only that op's own time is counted."""
    def source(rng):
        return samples[int(rng.integers(len(samples)))]

    total = 0.0
    for i, (image, boxes, labels) in enumerate(samples):
        rng = np.random.default_rng((seed, i))
        if force is None:
            t0 = time.perf_counter()
            pipeline(image, boxes, labels, rng, source=source)
            total += time.perf_counter() - t0
        else:
            trace: list[OpTrace] = []
            pipeline(image, boxes, labels, rng, source=source, trace=trace, force=force)
            total += sum(t.seconds for t in trace)
    return 1000.0 * total / len(samples)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--config", default=None, help="time the ops of this config (default: every registered op)")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    samples = load_preview_samples(args.data, (64, 64), args.n, seed=0)
    if args.config:
        pipeline = build_augment_pipeline(args.config)
    else:
        pipeline = AugmentPipeline([AugOpSpec(name, 1.0, {}) for name in AUGMENT_OPS])
    print(f"machine: {machine_info()}; {len(samples)} images 64x64 from {args.data}", flush=True)
    rows = []
    for name in pipeline.active_ops:
        time_pass(pipeline, samples[:4], name, 0)  # warm-up: one-off set-up on first use (e.g. CLAHE ~90 ms)
        runs = [time_pass(pipeline, samples, name, seed) for seed in range(args.repeats)]
        rows.append((name, statistics.median(runs)))
    whole_pipeline = build_augment_pipeline(args.config)  # None = the built-in default
    whole = statistics.median(time_pass(whole_pipeline, samples, None, seed) for seed in range(args.repeats))
    print("\n| op | mean ms / 64x64 image |\n|---|---:|")
    for name, ms in rows:
        print(f"| {name} | {ms:.3f} |")
    print(f"| *whole pipeline of {args.config or 'uhd/aug.yaml (built-in default)'}, as configured* | {whole:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
