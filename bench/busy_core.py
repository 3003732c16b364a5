#!/usr/bin/env python3
"""Does `uhd train` survive a busy machine? Wall time of a short run, idle vs one core kept busy.

    .venv/bin/python bench/busy_core.py             # ~10 min on 2 cores; writes docs/measurements.md's section
    .venv/bin/python bench/busy_core.py --repeats 1 # quicker look (no median)

Issue 16, finding 12: `make demo` took 105 s on an idle 2-core machine and 39 min while another
process used the second core. torch's OpenMP threads synchronise at the end of every parallel
region; with one of them descheduled by a neighbour, every one of the thousands of tiny kernels in
a step waits for the scheduler to give it back. The requirement: with one core busy, a 10-epoch
`cnn` run takes at most 2x its idle wall time (the lost core's worth).

What runs: `uhd train --preset quickstart` (arch cnn, the `make demo` recipe) for 10 epochs on a
synthetic set made once (`uhd dataset synth`, 3000 images, cached in runs/bench_busy/), decode
cache warm, one eval at the end. Each setting is run idle and with one `while True: pass` process
(not pinned: the scheduler places it, as a user's other job would be). A setting is a `--threads`
value (torch intra-op threads; `0` = UHD's automatic choice) and a `--num-workers` value.
Every cell is the median of `--repeats` runs, interleaved (idle, busy, idle, busy, ...). The
script asserts nothing about timings; it reports them with the machine and the load it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cpu_model, usable_cores  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "bench_busy"
DOC = REPO / "docs" / "measurements.md"
BEGIN = "<!-- busy_core.py: begin -->"
END = "<!-- busy_core.py: end -->"

#: (label, --threads, --num-workers). threads 2 / workers 0 is what UHD did before issue 16.
SETTINGS = [
    ("auto (UHD's default)", 0, None),
    ("2 threads, 0 workers (before)", 2, 0),
    ("1 thread, 0 workers", 1, 0),
    ("1 thread, 2 workers", 1, 2),
]


def uhd(*args: str) -> list[str]:
    return [sys.executable, "-m", "uhd_cli", *args]


def ensure_data() -> Path:
    data = OUT / "synth"
    if not (data / "000000.txt").exists() and not any(data.glob("*.txt")):
        subprocess.run(uhd("dataset", "synth", str(data), "--n", "3000", "--seed", "0"), check=True,
                       stdout=subprocess.DEVNULL)
    return data


def train_once(data: Path, threads: int, workers: int | None, tag: str, timeout: float | None = None) -> float:
    """Wall seconds of one run; a run still going after ``timeout`` is stopped and counts as ``inf``."""
    args = ["train", "--preset", "quickstart", "--image-dir", str(data), "--epochs", "10", "--eval-interval", "10",
            "--runs-dir", str(OUT / "runs"), "--exp-name", tag, "--exist-ok", "--no-tui",
            "--cache-dir", str(OUT / "cache"), "--threads", str(threads)]
    if workers is not None:
        args += ["--num-workers", str(workers)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    start = time.perf_counter()
    try:
        subprocess.run(uhd(*args), check=True, stdout=subprocess.DEVNULL, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return float("inf")
    return time.perf_counter() - start


def _seconds(value: float, timeout: float) -> str:
    return f"> {timeout:.0f} (stopped)" if value == float("inf") else f"{value:.1f}"


def busy_neighbour() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="stop a run after this many seconds (reported as '> N s'; a setting that timed out "
                             "once is not run again in that condition)")
    parser.add_argument("--no-doc", action="store_true", help="print the table, do not rewrite docs/measurements.md")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    data = ensure_data()
    train_once(data, 1, 0, "warmup")  # fills the decode cache: every timed run starts warm
    samples: dict[str, dict[str, list[float]]] = {label: {"idle": [], "busy": []} for label, _, _ in SETTINGS}
    others: list[float] = []
    for r in range(args.repeats):
        for label, threads, workers in SETTINGS:
            for condition in ("idle", "busy"):
                if samples[label][condition] and samples[label][condition][-1] == float("inf"):
                    continue  # its bound is known: another 4 minutes would not change the table
                neighbour = busy_neighbour() if condition == "busy" else None
                try:
                    psutil.cpu_percent(None)
                    seconds = train_once(data, threads, workers, f"t{threads}_w{workers}_{condition}", args.timeout)
                    if condition == "idle":
                        others.append(psutil.getloadavg()[0])
                finally:
                    if neighbour is not None:
                        neighbour.kill()
                        neighbour.wait()
                samples[label][condition].append(seconds)
                print(f"round {r + 1}: {label:32s} {condition}: {seconds:6.1f} s", flush=True)
    rows = []
    for label, _, _ in SETTINGS:
        idle = statistics.median(samples[label]["idle"])
        busy = statistics.median(samples[label]["busy"])
        rows.append((label, _seconds(idle, args.timeout), _seconds(busy, args.timeout),
                     f"{'>= ' if busy == float('inf') else ''}{min(busy, args.timeout) / idle:.2f}x"))
    (OUT / "results.json").write_text(json.dumps(samples, indent=1))  # inf is written as Infinity
    table = [f"Machine: {cpu_model()}, {usable_cores()} usable cores; torch threads and workers as listed; "
             f"`uhd train --preset quickstart --epochs 10` on 3000 synthetic images (warm decode cache, one eval); "
             f"median of {args.repeats} interleaved runs (a run stopped at the {args.timeout:.0f} s limit is not repeated); 1-min load average after the idle runs: "
             f"{statistics.median(others):.1f}.", "",
             "| setting | idle wall s | one core busy, wall s | busy / idle |", "|---|---:|---:|---:|"]
    table += [f"| {label} | {idle} | {busy} | {ratio} |" for label, idle, busy, ratio in rows]
    text = "\n".join(table)
    print(text)
    if not args.no_doc:
        doc = DOC.read_text()
        block = f"{BEGIN}\n{text}\n{END}"
        if BEGIN in doc:
            doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
        else:
            doc += f"\n## Training on a busy machine (bench/busy_core.py)\n\n{block}\n"
        DOC.write_text(doc)


if __name__ == "__main__":
    main()
