#!/usr/bin/env python3
"""Model zoo: accuracy vs speed of every preset that trains without a teacher file, on real data.

    .venv/bin/python bench/zoo.py                # full zoo (`make zoo`): ~30 min on 2 cores -> docs/zoo.md, docs/zoo.png
    .venv/bin/python bench/zoo.py --ablations    # + the ABLATIONS (augmentation, lr, EMA, AMP; ~17 min more), own table
    .venv/bin/python bench/zoo.py --quick        # CI smoke run: synthetic data, 1 epoch each, temp output (~15 s)
    .venv/bin/python bench/zoo.py --only cnn cnn_anchor --remeasure-latency

Every step calls, in this process, the core function of the `uhd` command named (``run_training``
for `uhd train`, ``export_checkpoint``, ``evaluate_model``, ``bench_onnx``); the equivalent
`uhd train ...` command line of each entry is printed and stored. Training uses ``--threads``
torch threads (default 1: on a shared 2-core machine two OpenMP threads stall whenever another
process takes a core).

For each entry (a preset, optionally with a few flag overrides such as ``--cnn-width``) it

1. trains with a fixed epoch budget on ``--data`` (default: the 864-image ``coco17val_person_dev``
   set, read in place, never copied), ``--device cpu``, ``--num-workers 0``, seed 42 (so every entry
   gets the same 691/173 train/val split);
2. exports the **last** epoch's checkpoint (EMA weights when the preset keeps an EMA) with
   ``--merge-postprocess`` (the core of ``uhd export``; the ONNX file is verified against PyTorch);
   the last epoch, not the best one, because "best" is picked on the val split we report on;
3. counts parameters and MACs: ``torch.utils.flop_counter.FlopCounterMode`` on the PyTorch model at
   batch 1 (conv, linear/matmul and attention FLOPs; MACs = FLOPs / 2; the CPU fused attention
   kernel has no built-in formula, so the standard SDPA formula is registered for it). The ONNX
   graph count of ``uhd bench`` (post-process included) is recorded as a cross-check;
4. scores the ONNX file with the core of ``uhd eval`` on the val split only (a folder of symlinks
   to the val images and labels, under the cache dir): mAP@0.5 (VOC all-point) and COCO
   mAP@[.5:.95];
5. and, in a separate last phase so that no training runs meanwhile, measures ONNX Runtime latency
   at 1 thread, batch 1 (the core of ``uhd bench``): ``--latency-rounds`` rounds over all entries,
   each ``--latency-runs`` timed calls after ``--latency-warmup`` warm-up calls; the entry's number
   is the median of its rounds' p50. ``os.getloadavg()`` is recorded with every round; it first
   waits (up to ``--wait-idle`` s) until the 1-minute load average drops below 1.

Each finished step is cached as JSON per entry under ``--cache-dir`` (default ``runs/zoo``,
git-ignored). The cache key hashes the entry's fully resolved RunConfig (preset + overrides +
budget; a user's augmentation file by content), a fingerprint of the data folder (names, sizes,
mtimes), the torch version and ZOO_VERSION; each entry also records a hash of the ``uhd_core``
sources and presets it was made with. A rerun redoes only entries whose key changed or whose
source hash differs from the checkout's (``--ignore-code-version`` reuses those; an entry made
before RunConfig gained a field is reused while that field is at its default;
``--remeasure-latency`` redoes the latency phase only). The report (``docs/zoo.md`` and
``docs/zoo.png``, or ``--out DIR``; all numbers in ``--json``) is rewritten from the cache on every
run; the hand-written notes between the NOTES markers of an existing report are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/machine.py, also when loaded by path (tests)
from machine import cpu_model, usable_cores  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path("/work/shared/data/coco17val_person_dev/obj_train_data")
#: Bump when the procedure changes in a way that makes cached entries incomparable.
ZOO_VERSION = 1
NOTES_BEGIN = "<!-- NOTES: hand-written, kept when bench/zoo.py rewrites this file -->"
NOTES_END = "<!-- END NOTES -->"
#: RunConfig fields that do not change what is trained (left out of the cache key).
NOT_IN_KEY = ("exp_name", "runs_dir", "cache_dir", "log_interval")
SEED = 42
#: mAP@0.5 differences up to this are noise on the 173-image val split (one seed, one split).
NOISE_MAP50 = 0.01
#: Epoch budget per family (full mode; 10 steps of 64 images per epoch): the CNNs train ~5x faster
#: per epoch, so they get 3x the epochs; the whole zoo then trains in ~30 min on 2 cores.
CNN_EPOCHS = 150
TRANSFORMER_EPOCHS = 50


@dataclass(frozen=True)
class Entry:
    name: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    epochs: int = CNN_EPOCHS
    note: str = ""
    base: str = ""  # ablations: the zoo entry this one changes one thing of

    def flags(self) -> list[str]:
        return overrides_to_flags(self.overrides)


#: The zoo: presets that train without a teacher file (plus width/stride variants as flag overrides).
ZOO: list[Entry] = [
    Entry("cnn", "cnn", {}, CNN_EPOCHS, "the original's CNN example (width 32, stride 16, 1x1 heads)"),
    Entry("cnn_w64", "cnn", {"cnn_width": 64}, CNN_EPOCHS, "same, width 64"),
    Entry("cnn_s8_hc32", "cnn", {"output_stride": 8, "head_conv": 32}, CNN_EPOCHS,
          "stride 8 + shared 3x3 head conv (docs/measurements.md's best cnn variant)"),
    Entry("cnn_s8", "cnn_s8", {}, CNN_EPOCHS,
          "UHD's tuned CNN preset: cnn_s8_hc32 + uhd/aug_tiny.yaml (the cnn_s8_hc32_aug_tiny ablation as a preset)"),
    Entry("cnn_anchor_w32", "cnn_anchor", {"cnn_width": 32}, CNN_EPOCHS, "anchor head, width 32"),
    Entry("cnn_anchor", "cnn_anchor", {}, CNN_EPOCHS, "anchor head, width 64, SE, stride 16"),
    Entry("transformer", "transformer", {}, TRANSFORMER_EPOCHS, "tiny DETR, 3 layers, d 64"),
    Entry("transformer_l4", "transformer_l4", {}, TRANSFORMER_EPOCHS, "tiny DETR, 4 layers, d 64"),
]

#: Targeted ablations (`--ablations`; ~15 min more), each compared with the zoo entry named in `base`.
ABLATIONS: list[Entry] = [
    Entry("cnn_aug_tiny", "cnn", {"aug_config": "uhd/aug_tiny.yaml"}, CNN_EPOCHS,
          "UHD's uhd/aug_tiny.yaml (zoom, shift, HSV, blur) instead of the preset's uhd/aug.yaml", "cnn"),
    Entry("cnn_s8_hc32_aug_tiny", "cnn", {"output_stride": 8, "head_conv": 32, "aug_config": "uhd/aug_tiny.yaml"},
          CNN_EPOCHS, "same change on cnn_s8_hc32 (the configuration of the zoo's `cnn_s8` preset)", "cnn_s8_hc32"),
    Entry("cnn_anchor_w32_aug_tiny", "cnn_anchor", {"cnn_width": 32, "aug_config": "uhd/aug_tiny.yaml"},
          CNN_EPOCHS, "same change on cnn_anchor_w32", "cnn_anchor_w32"),
    Entry("transformer_aug_tiny", "transformer", {"aug_config": "uhd/aug_tiny.yaml"}, TRANSFORMER_EPOCHS,
          "same change on transformer", "transformer"),
    Entry("cnn_lr3e-3", "cnn", {"lr": 0.003}, CNN_EPOCHS, "lr 0.003 (preset: 0.001)", "cnn"),
    Entry("cnn_no_ema", "cnn", {"use_ema": False}, CNN_EPOCHS,
          "no EMA (preset: EMA, decay 0.9998 with a 2000-update ramp)", "cnn"),
    Entry("cnn_anchor_fp32", "cnn_anchor", {"use_amp": False}, CNN_EPOCHS,
          "fp32 training (preset: --use-amp = bf16 autocast on the CPU)", "cnn_anchor"),
]


def log(msg: str) -> None:
    print(f"[zoo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def overrides_to_flags(overrides: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in overrides.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        else:
            out += [flag, str(value)]
    return out


# ------------------------------------------------------------------------------------------------
# Machine, code and data fingerprints

def machine_info() -> dict[str, Any]:
    import onnxruntime
    import torch

    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "usable_cores": usable_cores(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__}


def code_version() -> str:
    """sha256 over the engine's sources and the presets (what decides what a run trains and measures)."""
    digest = hashlib.sha256()
    files = sorted([*(REPO / "uhd_core").rglob("*.py"), *(REPO / "uhd_core").rglob("*.yaml"),
                    *(REPO / "presets").glob("*.yaml")])
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def data_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256(str(folder.resolve()).encode())
    for path in sorted(folder.iterdir()):
        st = path.stat()
        digest.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def entry_key(entry: Entry, overrides: dict[str, Any], data_fp: str) -> tuple[str, dict[str, Any]]:
    import torch

    from uhd_core.config import build_config

    resolved = build_config(entry.preset, overrides).model_dump(mode="json")
    for name in NOT_IN_KEY:
        resolved.pop(name, None)
    material = {"zoo_version": ZOO_VERSION, "config": resolved, "data": data_fp, "torch": torch.__version__}
    aug = Path(str(resolved.get("aug_config") or ""))
    if aug.is_file():  # a user's augmentation file (the built-in ones are covered by the code version)
        material["aug_config_sha256"] = hashlib.sha256(aug.read_bytes()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:12]
    return key, material


def compatible_entry(cache_dir: Path, name: str, material: dict[str, Any]) -> Path | None:
    """A cached entry of ``name`` whose key material equals ``material`` except for RunConfig fields it
    predates, all at their defaults now (a new flag that keeps the old behaviour by default does not
    invalidate the cache; whether the sources changed is still the code-version check's business)."""
    from uhd_core.config import RunConfig

    def default(field_name: str) -> Any:
        value = RunConfig.model_fields[field_name].get_default(call_default_factory=True)
        return json.loads(json.dumps(value, default=str))

    new_cfg = material["config"]
    rest = {k: v for k, v in material.items() if k != "config"}
    for path in sorted((cache_dir / "entries").glob(f"{name}-*/entry.json")):
        try:
            rec = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        old = rec.get("key_material") or {}
        old_cfg = old.get("config") or {}
        if rec.get("name") != name or "result" not in rec or {k: v for k, v in old.items() if k != "config"} != rest:
            continue
        if not old_cfg or set(old_cfg) - set(new_cfg) or any(old_cfg[k] != new_cfg[k] for k in old_cfg):
            continue
        added = set(new_cfg) - set(old_cfg)
        if all(k in RunConfig.model_fields and new_cfg[k] == default(k) for k in added):
            return path.parent
    return None


# ------------------------------------------------------------------------------------------------
# Steps (each the core function of the `uhd` command named)

def count_macs_torch(checkpoint: Path) -> tuple[int, int]:
    """(parameters, MACs at batch 1) of the checkpoint's model: FlopCounterMode FLOPs / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from uhd_core.models.loading import load_detector

    model, cfg = load_detector(checkpoint)

    def cpu_sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    custom = {}
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[torch.ops.aten._scaled_dot_product_flash_attention_for_cpu] = cpu_sdpa
    with FlopCounterMode(display=False, custom_mapping=custom) as counter, torch.no_grad():
        model(torch.zeros(1, 3, *cfg.img_size))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() // 2


class _Progress:
    """Event subscriber: one line per evaluation (every `every` epochs) and at the end."""

    def __init__(self, name: str, every: int) -> None:
        self.name, self.every = name, max(1, every)

    def __call__(self, event: Any) -> None:
        from uhd_core.engine.events import EvalFinished, RunStarted

        if isinstance(event, EvalFinished) and (event.epoch % self.every == 0 or event.epoch == 1):
            log(f"  {self.name}: epoch {event.epoch} val mAP@0.5 {event.map50:.4f} (best {event.best_map50:.4f})")
        elif isinstance(event, RunStarted):
            log(f"  {self.name}: {event.params:,} params, {event.num_train} train / {event.num_val} val images, "
                f"{event.steps_per_epoch} steps/epoch x {event.epochs} epochs")


def train_entry(entry: Entry, overrides: dict[str, Any], run_dir: Path, threads: int) -> dict[str, Any]:
    import torch

    from uhd_core.engine.api import run_training

    torch.set_num_threads(threads)
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a half-finished earlier attempt: start clean
    load = os.getloadavg()
    t0 = time.perf_counter()
    result = run_training(entry.preset, overrides, [_Progress(entry.name, max(1, overrides["epochs"] // 5))],
                          tensorboard=False)
    wall = time.perf_counter() - t0
    if result.stopped_early or result.last_checkpoint is None:
        raise RuntimeError(f"{entry.name}: training stopped early")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["event"] == "RunStarted")
    maps = [e["map50"] for e in events if e["event"] == "EvalFinished"]
    epochs = [e for e in events if e["event"] == "EpochEnded"]
    split = json.loads((run_dir / "split.json").read_text())
    return {
        "params": started["params"], "num_train": started["num_train"], "num_val": started["num_val"],
        "steps_per_epoch": started["steps_per_epoch"], "epochs": len(epochs), "threads": threads,
        "wall_s": wall, "epoch_s_median": statistics.median(e["seconds"] for e in epochs),
        "loadavg_at_start": list(load), "loadavg_at_end": list(os.getloadavg()),
        "val_map50_per_epoch": maps, "val_map50_best": max(maps), "val_map50_last": maps[-1],
        "val_map50_last5_mean": statistics.fmean(maps[-5:]),
        "last_checkpoint": str(result.last_checkpoint), "best_checkpoint": str(result.best_checkpoint),
        "val_files": split["val"],
    }


def val_folder(data: Path, files: list[str], cache_dir: Path) -> Path:
    """A folder of symlinks to the val split's images and labels (never copies of the data)."""
    digest = hashlib.sha256(json.dumps([str(data.resolve()), sorted(files)]).encode()).hexdigest()[:12]
    folder = cache_dir / "val" / digest
    if not folder.is_dir():
        tmp = Path(tempfile.mkdtemp(prefix="val_", dir=cache_dir))
        for name in files:
            image = data.resolve() / name
            (tmp / name).symlink_to(image)
            label = image.with_suffix(".txt")
            if label.exists():
                (tmp / label.name).symlink_to(label)
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(tmp, folder)
        except OSError:  # another run made it first
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


@contextlib.contextmanager
def quiet_fds(path: Path):
    """Send this process's stdout and stderr file descriptors to ``path`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def export_and_eval(entry_dir: Path, train: dict[str, Any], val_dir: Path) -> dict[str, Any]:
    from uhd_core.evaluation import evaluate_model
    from uhd_core.export.api import export_checkpoint

    onnx_path = entry_dir / "model.onnx"
    t0 = time.perf_counter()
    with quiet_fds(entry_dir / "export.log"):  # onnxsim's C++ side prints hundreds of lines
        result = export_checkpoint(train["last_checkpoint"], onnx_path, merge_postprocess=True, overwrite=True,
                                   latency=False)
    if not result.verified:
        raise RuntimeError(f"export of {train['last_checkpoint']} failed verification: {result.max_abs_diff}")
    export_s = time.perf_counter() - t0
    params, macs = count_macs_torch(Path(train["last_checkpoint"]))
    keep = Path(train["last_checkpoint"]).resolve()
    for ckpt in keep.parent.glob("*.pt"):  # the other best/last checkpoints: ~0.5 GB over the zoo
        if ckpt.resolve() != keep:
            ckpt.unlink()
    report = evaluate_model(onnx_path, val_dir)
    return {
        "onnx": str(onnx_path), "onnx_bytes": onnx_path.stat().st_size, "export_s": export_s,
        "used_ema": result.used_ema, "max_abs_diff": max(result.max_abs_diff.values()),
        "params_torch": params, "macs_torch": int(macs),
        "eval": {"num_images": report.num_images, "num_boxes": sum(report.num_gt.values()), "map50": report.map_voc, "coco_map": report.coco_map_50_95,
                 "coco_ap50": report.coco_map_50, "best_f1": report.best_f1,
                 "best_f1_threshold": report.best_f1_threshold},
    }


def wait_quiet(max_seconds: float, threshold: float = 1.0) -> None:
    deadline = time.monotonic() + max_seconds
    while os.getloadavg()[0] >= threshold and time.monotonic() < deadline:
        log(f"  waiting for a quiet machine: load average {os.getloadavg()[0]:.2f} (>= {threshold})")
        time.sleep(min(15.0, max(0.0, deadline - time.monotonic())) or 0.1)


def measure_latency(records: list[dict[str, Any]], rounds: int, runs: int, warmup: int) -> None:
    """`uhd bench`'s core at 1 thread, batch 1: `rounds` interleaved rounds, median of the p50s."""
    from uhd_core.export.bench import bench_onnx

    samples: dict[str, list[dict[str, Any]]] = {r["key"]: [] for r in records}
    for k in range(rounds):
        for rec in records:
            load = os.getloadavg()
            rows, macs, _ = bench_onnx(rec["result"]["onnx"], [1], [1], runs=runs, warmup=warmup)
            samples[rec["key"]].append({"p50_ms": rows[0].p50_ms, "p90_ms": rows[0].p90_ms,
                                        "p99_ms": rows[0].p99_ms, "loadavg": list(load), "macs_onnx": macs})
        log(f"  latency round {k + 1}/{rounds} done (load average {os.getloadavg()[0]:.2f})")
    for rec in records:
        s = samples[rec["key"]]
        rec["latency"] = {
            "p50_ms": statistics.median(x["p50_ms"] for x in s), "p90_ms": statistics.median(x["p90_ms"] for x in s),
            "rounds": s, "runs": runs, "warmup": warmup, "threads": 1, "batch": 1,
            "loadavg_max": max(x["loadavg"][0] for x in s), "macs_onnx": s[0]["macs_onnx"],
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }


# ------------------------------------------------------------------------------------------------
# Report

def pareto(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both (lower latency, higher mAP), by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def fmt_macs(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:.2f} M" if n < 1e9 else f"{n / 1e9:.2f} G"


def table(records: list[dict[str, Any]], front: set[str]) -> str:
    lines = [("| entry | preset + flags | epochs | train wall | params | MACs | ONNX | mAP@0.5 | COCO mAP | "
             "p50 latency (1 thread) | load avg at latency | val mAP@0.5 during training: best / mean of last 5 |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        t, e, lat = r["train"], r["result"]["eval"], r.get("latency") or {}
        name = f"**{r['name']}**" if r["key"] in front else r["name"]
        flags = " ".join(["--preset", r["preset"], *r["flags"]])
        p50 = f"{lat['p50_ms']:.3f} ms" if lat else "n/a"
        load = f"{lat['loadavg_max']:.2f}" if lat else "n/a"
        lines.append(
            f"| {name} | `{flags}` | {t['epochs']} | {t['wall_s']:.0f} s | {r['result']['params_torch']:,} | "
            f"{fmt_macs(r['result']['macs_torch'])} | {r['result']['onnx_bytes'] / 1024:.0f} KiB | "
            f"{e['map50']:.4f} | {e['coco_map']:.4f} | {p50} | {load} | "
            f"{t['val_map50_best']:.4f} / {t['val_map50_last5_mean']:.4f} |")
    return "\n".join(lines)


def plot(records: list[dict[str, Any]], front_keys: list[str], path: Path, title: str,
         extra: list[dict[str, Any]] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    pts = [r for r in records if r.get("latency")]
    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    pts.sort(key=lambda r: r["latency"]["p50_ms"])
    for n, r in enumerate(pts):
        on_front = r["key"] in front_keys
        ax.scatter(r["latency"]["p50_ms"], r["result"]["eval"]["map50"], s=60 if on_front else 40,
                   color="tab:red" if on_front else "tab:blue", zorder=3)
        ax.annotate(r["name"], (r["latency"]["p50_ms"], r["result"]["eval"]["map50"]), textcoords="offset points",
                    xytext=(6, 5 if n % 2 == 0 else -12), fontsize=8)
    for r in extra or []:
        if r.get("latency"):
            ax.scatter(r["latency"]["p50_ms"], r["result"]["eval"]["map50"], s=36, marker="x", color="0.45", zorder=3)
            ax.annotate(r["name"], (r["latency"]["p50_ms"], r["result"]["eval"]["map50"]), textcoords="offset points",
                        xytext=(6, -3), fontsize=7, color="0.35")
    if any(r.get("latency") for r in extra or []):
        ax.scatter([], [], marker="x", color="0.45", label=f"ablation, mAP@0.5 moved > {NOISE_MAP50} (not in the front)")
    by_key = {r["key"]: r for r in pts}
    fx = [by_key[k]["latency"]["p50_ms"] for k in front_keys if k in by_key]
    fy = [by_key[k]["result"]["eval"]["map50"] for k in front_keys if k in by_key]
    if fx:
        ax.step(fx, fy, where="post", color="tab:red", linewidth=1.2, alpha=0.7, label="Pareto front (zoo entries)",
                zorder=2)
    ax.legend(loc="lower right", fontsize=8)
    if pts and max(r["latency"]["p50_ms"] for r in pts) / max(min(r["latency"]["p50_ms"] for r in pts), 1e-9) > 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("ONNX Runtime p50 latency, 1 thread, batch 1 (ms)")
    ax.set_ylabel("mAP@0.5 on the val split")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.margins(x=0.15, y=0.12)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _config_sans_preset(rec: dict[str, Any]) -> dict[str, Any]:
    """The resolved RunConfig an entry trained, without the (informational) preset name."""
    return {k: v for k, v in rec.get("key_material", {}).get("config", {}).items() if k != "preset"}


def write_report(out_dir: Path, json_path: Path, zoo: list[dict[str, Any]], ablations: list[dict[str, Any]],
                 meta: dict[str, Any]) -> None:
    pts = [(r["latency"]["p50_ms"], r["result"]["eval"]["map50"]) for r in zoo if r.get("latency")]
    with_lat = [r for r in zoo if r.get("latency")]
    front = [with_lat[i]["key"] for i in pareto(pts)]
    md_path, png_path = out_dir / "zoo.md", out_dir / "zoo.png"
    notes = ""
    if md_path.exists():
        old = md_path.read_text()
        if NOTES_BEGIN in old and NOTES_END in old:
            notes = old[old.index(NOTES_BEGIN) + len(NOTES_BEGIN):old.index(NOTES_END)].strip("\n")
    m = meta["machine"]
    spread = max(((max(p) - min(p)) / min(p) * 100 for p in
                  ([x["p50_ms"] for x in r["latency"]["rounds"]] for r in zoo + ablations if r.get("latency"))),
                 default=0.0)
    macs_diff = max((abs(r["result"]["macs_torch"] - r["latency"]["macs_onnx"]) / r["latency"]["macs_onnx"] * 100
                     for r in zoo if r.get("latency") and r["latency"].get("macs_onnx")), default=0.0)
    loads = [r["latency"]["loadavg_max"] for r in zoo + ablations if r.get("latency")]
    busy = any(v > 1.0 for v in loads)
    ft = "\n".join(f"- `{r['name']}`: {r['latency']['p50_ms']:.3f} ms, mAP@0.5 {r['result']['eval']['map50']:.4f}"
                   for r in with_lat if r["key"] in front)
    budget = sorted({(r["preset"].split("_")[0], r["train"]["epochs"]) for r in zoo})
    parts = [
        "# Model zoo: accuracy vs speed on `coco17val_person_dev`" if not meta["quick"] else
        "# Model zoo (QUICK smoke run: synthetic data, 1 epoch; numbers mean nothing)",
        "",
        "Generated by `bench/zoo.py` (do not edit the tables by hand; the notes section is kept on rerun).",
        "",
        f"- Command: `{meta['command']}`",
        (f"- Machine: {m['cpu_model']}, {m['cores']} cores ({m['usable_cores']} usable), {m['platform']}; "
        f"Python {m['python']}, torch {m['torch']}, onnxruntime {m['onnxruntime']}"),
        (f"- Data: `{meta['data']}` ({meta['num_train']} train / {meta['num_val']} val images, split seed {SEED}); "
        "every number below is on the val split"),
        "- Budget (fixed epochs, cosine lr over them, batch and lr from each preset): "
        + ", ".join(f"{fam} presets {ep} epochs" for fam, ep in budget)
        + f"; training on `--device cpu --num-workers 0` with {meta['threads']} torch thread(s), one entry at a time. "
        f"Training wall time, summed: zoo {sum(r['train']['wall_s'] for r in zoo) / 60:.1f} min"
        + (f", ablations {sum(r['train']['wall_s'] for r in ablations) / 60:.1f} min" if ablations else "")
        + f" (this invocation of the script: {meta['script_wall_s'] / 60:.1f} min; entries found in the cache cost nothing).",
        "- Code version (sha256 of uhd_core + presets, first 16 hex): "
        + ", ".join(sorted({r['code'] for r in zoo + ablations})) + f"; report written {meta['written']}.",
        "",
        "## Zoo",
        "",
        table(zoo, set(front)),
        "",
        ("Columns: *params* and *MACs* from the PyTorch model at batch 1, 64x64 "
        "(`torch.utils.flop_counter.FlopCounterMode`: conv, linear/matmul and attention; MACs = FLOPs / 2; "
        f"the ONNX-graph count of `uhd bench`, in the cache JSON, differs by at most {macs_diff:.1f}%). "
        "*ONNX*: the `--merge-postprocess` export of the **last** epoch's checkpoint (EMA weights where the "
        "preset keeps an EMA). *mAP@0.5* (VOC all-point) and *COCO mAP* (@[.5:.95], 101-point) by `uhd eval` "
        "on that ONNX file, val split only. *p50 latency*: ONNX Runtime, 1 intra-op thread, batch 1, "
        f"median over {meta['latency_rounds']} interleaved rounds of each round's p50 "
        f"({meta['latency_runs']} timed calls after {meta['latency_warmup']} warm-up calls each). "
        "*Load avg at latency*: the highest 1-minute `os.getloadavg()` seen when a round started. The last "
        "column is the trainer's own per-epoch val evaluation (PyTorch, EMA): the best epoch is picked on "
        "the very split it is scored on, so it is optimistic; the ONNX mAP of the last epoch is the number to compare. "
        "**Bold**: on the Pareto front (no other entry is both faster and more accurate)."),
        "",
        "Pareto front (latency ascending):",
        "",
        ft or "- (no latency measured)",
        "",
        (f"**Noise:** the val split has {meta['num_val']} images ({zoo[0]['result']['eval'].get('num_boxes', '?')} boxes); one seed, one split. mAP@0.5 differences of "
        "~0.01 are noise at this size (docs/measurements.md saw single runs move by that much between "
        "neighbouring epochs and between seeds). Latency: the rounds of one entry agree within "
        f"{spread:.1f}% (max - min over min; every round's p50 is in the cache JSON)."),
        "",
    ]
    if busy:
        parts += [("**Warning:** the 1-minute load average exceeded 1 during the latency phase "
                  f"(max {max(loads):.2f}): other processes may have been running, so latencies may be inflated."), ""]
    else:
        parts += [f"The load average stayed at or below 1 during the latency phase (max {max(loads, default=0):.2f}).", ""]
    if ablations:
        by_name = {r["name"]: r for r in zoo}
        lines = ["## Ablations", "",
                 ("One change against a zoo entry (same budget, seed and split). Train wall times are only "
                 "comparable when the load was similar (the load average at the start and end of each training is "
                 "in the cache JSON)."), "",
                 ("| entry | change | base entry | epochs | train wall (median s/epoch) | mAP@0.5 | vs base | COCO mAP | vs base | "
                 "val mAP@0.5 during training: best / mean of last 5 |"),
                 "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        shown: set[str] = set()
        for r in ablations:
            base = by_name.get(r.get("base", ""))
            rows = ([base] if base and base["name"] not in shown else []) + [r]
            for x in rows:
                shown.add(x["name"])
                e, t = x["result"]["eval"], x["train"]
                is_base = x is base
                d50 = "" if is_base or not base else f"{e['map50'] - base['result']['eval']['map50']:+.4f}"
                dco = "" if is_base or not base else f"{e['coco_map'] - base['result']['eval']['coco_map']:+.4f}"
                lines.append(f"| {x['name']} | {'(zoo entry)' if is_base else x['note']} | {'' if is_base else r.get('base', '')} | "
                             f"{t['epochs']} | {t['wall_s']:.0f} s ({t['epoch_s_median']:.2f}) | {e['map50']:.4f} | {d50} | "
                             f"{e['coco_map']:.4f} | {dco} | {t['val_map50_best']:.4f} / {t['val_map50_last5_mean']:.4f} |")
        parts += lines + [""]
    parts += ["![mAP@0.5 vs latency](zoo.png)", "",
              ("Red: on the Pareto front of the zoo entries; blue: other zoo entries; grey crosses: the ablations "
              f"that moved mAP@0.5 by more than {NOISE_MAP50} from their base entry (for reference, not part of the front; "
              "an ablation that trains exactly a zoo entry's configuration is shown as that entry)."), "", "## Notes", "", NOTES_BEGIN, notes or "(none yet)", NOTES_END, ""]
    title = (f"{'QUICK smoke run - ' if meta['quick'] else ''}mAP@0.5 (val, {meta['num_val']} images) vs "
             f"ORT latency; {m['cpu_model']}, 1 thread")
    by_name = {r["name"]: r for r in zoo}
    zoo_configs = [_config_sans_preset(r) for r in zoo]
    moved = [r for r in ablations if r.get("base") in by_name and abs(
        r["result"]["eval"]["map50"] - by_name[r["base"]]["result"]["eval"]["map50"]) > NOISE_MAP50
        and _config_sans_preset(r) not in zoo_configs]  # same config as a zoo entry: plotted as that entry
    plot(zoo, front, png_path, title, moved)
    md_path.write_text("\n".join(parts))
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"meta": meta, "zoo": zoo, "ablations": ablations}, indent=1))
    log(f"wrote {md_path}, {png_path} and {json_path}")


# ------------------------------------------------------------------------------------------------
# Driver

def quick_data(cache_dir: Path) -> Path:
    """A tiny synthetic YOLO folder (made once per cache dir with the core of `uhd dataset synth`)."""
    from uhd_core.data.synth import write_synthetic_dataset

    folder = cache_dir / "quick_data" / "synth_n64_s0"
    if not (folder / ".complete").exists():
        if folder.exists():
            shutil.rmtree(folder)
        write_synthetic_dataset(folder, n=64, seed=0)
        (folder / ".complete").write_text("")
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI smoke run: synthetic data, 1 epoch, temp output")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="YOLO folder (read in place)")
    parser.add_argument("--out", type=Path, help="report folder (default docs/; --quick: a new temp dir)")
    parser.add_argument("--cache-dir", type=Path, help="per-entry JSON + runs (default runs/zoo; --quick: runs/zoo_quick)")
    parser.add_argument("--json", type=Path, help="all numbers as JSON (default: CACHE_DIR/zoo.json)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="entries to run (others still reported from the cache)")
    parser.add_argument("--ablations", action="store_true", help="also train the ABLATIONS (augmentation, lr, EMA, AMP)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for training (default 1: robust on a shared 2-core machine)")
    parser.add_argument("--latency-rounds", type=int, help="interleaved latency rounds (default 5; --quick 1)")
    parser.add_argument("--latency-runs", type=int, help="timed calls per round (default 1000; --quick 20)")
    parser.add_argument("--latency-warmup", type=int, help="warm-up calls per round (default 100; --quick 5)")
    parser.add_argument("--wait-idle", type=float, help="max seconds to wait for load average < 1 before latency (default 300; --quick 0)")
    parser.add_argument("--remeasure-latency", action="store_true", help="redo the latency phase for all entries")
    parser.add_argument("--ignore-code-version", action="store_true",
                        help="reuse cached entries made with other uhd_core sources (default: redo them)")
    args = parser.parse_args(argv)
    quick = args.quick
    rounds = args.latency_rounds or (1 if quick else 5)
    runs = args.latency_runs or (20 if quick else 1000)
    warmup = args.latency_warmup or (5 if quick else 100)
    wait_idle = args.wait_idle if args.wait_idle is not None else (0.0 if quick else 300.0)
    cache_dir = (args.cache_dir or REPO / "runs" / ("zoo_quick" if quick else "zoo")).resolve()
    out_dir = (args.out or (Path(tempfile.mkdtemp(prefix="uhd_zoo_quick_")) if quick else REPO / "docs")).resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    t_script = time.perf_counter()
    if quick:  # keep the synthetic images' decode cache out of ~/.cache/uhd
        os.environ.setdefault("UHD_CACHE_DIR", str(cache_dir / "decode_cache"))
    import torch

    torch.set_num_threads(args.threads)
    info = machine_info()
    log(f"machine: {info['cpu_model']}, {info['cores']} cores, torch {info['torch']}; cache {cache_dir}; out {out_dir}")
    data = quick_data(cache_dir) if quick else args.data.resolve()
    if not data.is_dir():
        print(f"error: --data {data} is not a folder", file=sys.stderr)
        return 2
    data_fp = data_fingerprint(data)
    code = code_version()
    entries = list(ZOO) + (list(ABLATIONS) if args.ablations else [])
    if quick:
        entries = [dataclasses.replace(e, epochs=1) for e in entries]
    names = {e.name for e in entries}
    if args.only and not set(args.only) <= names:
        print(f"error: --only: unknown entries {sorted(set(args.only) - names)}; known: {sorted(names)}", file=sys.stderr)
        return 2
    records: dict[str, dict[str, Any]] = {}
    for i, entry in enumerate(entries, 1):
        common = {"image_dir": str(data), "epochs": entry.epochs, "device": "cpu", "num_workers": 0, "seed": SEED,
                  "runs_dir": str(cache_dir / "runs"), "log_interval": 10**6}
        overrides = {**entry.overrides, **common}
        key, material = entry_key(entry, overrides, data_fp)
        entry_dir = cache_dir / "entries" / f"{entry.name}-{key}"
        if not entry_dir.is_dir():
            older = compatible_entry(cache_dir, entry.name, material)
            if older is not None:
                log(f"[{i}/{len(entries)}] {entry.name}: using {older.name}, made before RunConfig gained fields "
                    "that are at their defaults here")
                entry_dir, key = older, older.name.removeprefix(f"{entry.name}-")
        overrides["exp_name"] = f"{entry.name}-{key}"
        run_dir = cache_dir / "runs" / overrides["exp_name"]
        rec_path = entry_dir / "entry.json"
        rec = json.loads(rec_path.read_text()) if rec_path.exists() else None
        if rec is not None:  # descriptions are not part of the key: take them from the current definitions
            rec.update(note=entry.note, base=entry.base)
        if rec is not None and rec.get("code") != code and not args.ignore_code_version:
            log(f"[{i}/{len(entries)}] {entry.name}: cached entry made with other uhd_core sources "
                f"({rec.get('code')} != {code}): redoing it (--ignore-code-version reuses it)")
            rec = None
        selected = not args.only or entry.name in args.only
        cli = ["uhd", "train", "--preset", entry.preset, *entry.flags(), "--image-dir", str(data), "--epochs",
               str(entry.epochs), "--device", "cpu", "--num-workers", "0", "--seed", str(SEED)]
        if rec is None:
            if not selected:
                continue
            rec = {"name": entry.name, "preset": entry.preset, "flags": entry.flags(), "note": entry.note,
                   "base": entry.base, "key": key, "key_material": material, "code": code,
                   "command": shlex.join(cli)}
        if "result" in rec:
            log(f"[{i}/{len(entries)}] {entry.name}: cached ({rec_path.parent.name})")
        elif selected:
            entry_dir.mkdir(parents=True, exist_ok=True)
            if "train" not in rec:
                log(f"[{i}/{len(entries)}] {entry.name}: training {entry.epochs} epochs: {shlex.join(cli)}")
                rec["train"] = train_entry(entry, overrides, run_dir, args.threads)
                rec_path.write_text(json.dumps(rec, indent=1))
                log(f"  {entry.name}: trained in {rec['train']['wall_s']:.0f} s")
            val_dir = val_folder(data, rec["train"]["val_files"], cache_dir)
            rec["result"] = export_and_eval(entry_dir, rec["train"], val_dir)
            rec_path.write_text(json.dumps(rec, indent=1))
            ev = rec["result"]["eval"]
            log(f"  {entry.name}: ONNX {rec['result']['onnx_bytes'] / 1024:.0f} KiB, "
                f"{rec['result']['macs_torch'] / 1e6:.2f} M MACs, val mAP@0.5 {ev['map50']:.4f}, COCO mAP {ev['coco_map']:.4f}")
        else:
            continue
        rec["_path"] = str(rec_path)
        records[entry.name] = rec
    todo = [r for r in records.values() if args.remeasure_latency or "latency" not in r]
    if todo:
        log(f"latency phase: {len(todo)} model(s), {rounds} round(s) x {runs} calls, 1 thread, batch 1")
        if wait_idle > 0:
            wait_quiet(wait_idle)
        measure_latency(todo, rounds, runs, warmup)
        for r in todo:
            path = Path(r.pop("_path"))
            path.write_text(json.dumps(r, indent=1))
            r["_path"] = str(path)
            log(f"  {r['name']}: p50 {r['latency']['p50_ms']:.3f} ms (load average <= {r['latency']['loadavg_max']:.2f})")
    for r in records.values():
        r.pop("_path", None)
    zoo = [records[e.name] for e in ZOO if e.name in records]
    abl = [records[e.name] for e in ABLATIONS if e.name in records]
    if not zoo:
        print("error: no zoo entry trained or cached", file=sys.stderr)
        return 1
    first = zoo[0]["train"]
    meta = {"quick": quick, "machine": info, "command": shlex.join(["python", "bench/zoo.py", *(argv if argv is not None else sys.argv[1:])]),
            "data": str(data), "num_train": first["num_train"], "num_val": first["num_val"], "threads": args.threads,
            "latency_rounds": rounds, "latency_runs": runs, "latency_warmup": warmup, "code": code,
            "script_wall_s": time.perf_counter() - t_script,
            "written": datetime.now(UTC).isoformat(timespec="seconds")}
    write_report(out_dir, args.json or cache_dir / "zoo.json", zoo, abl, meta)
    log(f"done in {meta['script_wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
