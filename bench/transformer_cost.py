#!/usr/bin/env python3
"""Memory and time of training the `transformer` preset, per token layout, at batch 64 on the CPU.

    .venv/bin/python bench/transformer_cost.py                  # all layouts, 3 epochs each (~10 min, 2 cores)
    .venv/bin/python bench/transformer_cost.py --layouts s4-s8-s16 --epochs 5
    .venv/bin/python bench/transformer_cost.py --json cost.json

Each layout trains in its own process (`python -m uhd_cli train --preset transformer ...` on the
real dev data, num_workers 0, device cpu), so its peak resident set size (``ru_maxrss`` from
``wait4``) is that run's alone: data decode and cache, model, optimizer, activations of the
batch-64 step, evaluation. Seconds per epoch and images/s are the trainer's own ``EpochEnded``
numbers (the epoch loop only), median over the epochs (first epoch excluded when there are 3 or
more: allocator warm-up). The layouts:

| layout | tokens at 64x64 |
|---|---|
| ``s2-s2-s4-s8`` (the original's ``--use-fpn``) | 32x32 + 32x32 + 16x16 + 8x8 = 2,368 |
| ``s4-s8-s16`` | 16x16 + 8x8 + 4x4 = 336 |
| ``no-fpn`` (stem only, stride 2) | 32x32 = 1,024 |

The report also shows how large the (tokens x tokens) attention matrices of one encoder layer would
be if materialized per head, as the original's ``nn.Transformer`` training path does, to put the
measured RSS in context. Run on an idle machine; no number here is asserted anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import DEFAULT_DATA, machine_info  # noqa: E402

LAYOUTS = {
    "s2-s2-s4-s8": (["--use-fpn", "--fpn-layout", "s2-s2-s4-s8"], 32 * 32 * 2 + 16 * 16 + 8 * 8),
    "s4-s8-s16": (["--use-fpn", "--fpn-layout", "s4-s8-s16"], 16 * 16 + 8 * 8 + 4 * 4),
    "no-fpn": (["--no-use-fpn"], 32 * 32),
}
BATCH = 64
HEADS = 4


def run_layout(name: str, data: Path, epochs: int, workdir: Path) -> dict[str, Any]:
    flags, tokens = LAYOUTS[name]
    cmd = [sys.executable, "-m", "uhd_cli", "train", "--preset", "transformer", *flags, "--image-dir", str(data),
           "--epochs", str(epochs), "--batch-size", str(BATCH), "--num-workers", "0", "--device", "cpu",
           "--runs-dir", str(workdir / "runs"), "--exp-name", name, "--cache-dir", str(workdir / "cache"),
           "--log-interval", "1000"]
    env = {**os.environ, "CI": "1"}  # plain log lines
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
    output = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{name}: training failed\n{output[-2000:]}")
    events = [json.loads(line) for line in (workdir / "runs" / name / "events.jsonl").read_text().splitlines()]
    epochs_ev = [e for e in events if e["event"] == "EpochEnded"]
    timed = epochs_ev[1:] if len(epochs_ev) >= 3 else epochs_ev
    started = next(e for e in events if e["event"] == "RunStarted")
    return {
        "layout": name, "tokens": tokens, "params": started["params"], "epochs": len(epochs_ev),
        "train_images": started["num_train"], "peak_rss_gb": usage.ru_maxrss / 1024**2,  # ru_maxrss is KiB on Linux
        "seconds_per_epoch": statistics.median(e["seconds"] for e in timed),
        "imgs_per_s": statistics.median(e["imgs_per_s"] for e in timed),
        "epoch_seconds": [e["seconds"] for e in epochs_ev], "wall_seconds": wall,
        "materialized_attention_gb_per_layer": BATCH * HEADS * tokens * tokens * 4 / 1024**3,
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| layout | tokens | params | peak RSS | s/epoch | img/s | (attention matrices if materialized, per layer) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['layout']} | {r['tokens']:,} | {r['params']:,} | {r['peak_rss_gb']:.2f} GB | "
                     f"{r['seconds_per_epoch']:.1f} | {r['imgs_per_s']:.0f} | {r['materialized_attention_gb_per_layer']:.2f} GB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: --data {args.data} is not a folder", file=sys.stderr)
        return 2
    info = machine_info()
    print(f"machine: {info}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="uhd_tf_cost_") as tmp:
        for name in args.layouts:
            print(f"training the transformer preset, layout {name}, {args.epochs} epochs at batch {BATCH} ...", flush=True)
            rows.append(run_layout(name, args.data, args.epochs, Path(tmp)))
            print(f"  {rows[-1]['peak_rss_gb']:.2f} GB peak RSS, {rows[-1]['seconds_per_epoch']:.1f} s/epoch", flush=True)
    print()
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "batch": BATCH, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
