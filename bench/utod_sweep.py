#!/usr/bin/env python3
"""Sweep of run specs (a preset + flags): train, export, score and time each, one markdown table.

    .venv/bin/python bench/utod_sweep.py                          # the built-in SWEEP -> docs/utod_sweep.md
    .venv/bin/python bench/utod_sweep.py --spec 'w16: utod_w16 --epochs 100' --spec 'w24: utod_w24'
    .venv/bin/python bench/utod_sweep.py --specs sweep.yaml       # [{name, preset, flags: "..." or [...]}]
    .venv/bin/python bench/utod_sweep.py --quick                  # smoke run: synthetic data, 1 epoch, temp output

Each spec runs the commands a user would type, as subprocesses (``python -m uhd_cli``, niced):

1. ``uhd train --preset P FLAGS --image-dir DATA --threads 1 --device cpu --seed 42`` into
   ``<cache>/<name>/run`` (the same seeded train/val split of ``--data`` for every spec; extra
   training folders given with ``--extra-train-dir`` in FLAGS only add training images);
2. ``uhd export <last.pt> --merge-postprocess`` (the last epoch, not the best: "best" is picked on
   the val split we report on);
3. ``uhd eval model.onnx --image-dir VAL`` where VAL is a folder of symlinks to the val images of
   the run's split.json (bench/zoo.py's ``val_folder``), and the same on the --image-dir's
   training images (train-split mAP: how far the model fits what it saw, next to val);
4. ``uhd bench model.onnx --threads 1`` (p50 latency, batch 1; MACs of the ONNX graph).

Every finished step is cached as JSON in ``<cache>/<name>/result.json`` (default cache
``runs/utod_sweep``), keyed by the spec, the data folder's fingerprint and the flags the script
adds: a rerun skips what is done, and a changed spec redoes its entry. The table is written into
``--out`` (default docs/utod_sweep.md) between the SWEEP markers; the rest of the file is kept.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/zoo.py, also when loaded by path (tests)
from zoo import DEFAULT_DATA, REPO, SEED, data_fingerprint, fmt_macs, quick_data, val_folder  # noqa: E402

SWEEP_VERSION = 1
BEGIN = "<!-- SWEEP TABLE: written by bench/utod_sweep.py -->"
END = "<!-- END SWEEP TABLE -->"
#: The two training-only folders of issue 18, beside the dev set (../shared/data/ of the checkout).
EXTRA_DIRS = tuple(str(DEFAULT_DATA.parent.parent / name / "obj_train_data")
                   for name in ("coco17val_person_extra", "capston2_person_extra"))


def shown_path(text: str) -> str:
    """Paths under the checkout's parent as ``..`` (the tables in docs/ hold no machine's absolute paths)."""
    return text.replace(str(REPO.parent), "..")


@dataclass(frozen=True)
class Spec:
    """One row: ``uhd train --preset {preset} {flags}`` (flags as typed on a command line)."""

    name: str
    preset: str
    flags: tuple[str, ...] = ()


#: The built-in sweep: the data options on the current best CNN (the utod presets join via --spec/--specs).
SWEEP = (
    Spec("cnn_s8", "cnn_s8", ("--epochs", "150")),
    Spec("cnn_s8_min4", "cnn_s8", ("--epochs", "150", "--min-box-px", "4")),
    Spec("cnn_s8_extra", "cnn_s8", ("--epochs", "150", "--extra-train-dir", ",".join(EXTRA_DIRS))),
    Spec("cnn_s8_extra_min4", "cnn_s8", ("--epochs", "150", "--extra-train-dir", ",".join(EXTRA_DIRS),
                                         "--min-box-px", "4")),
)


def log(msg: str) -> None:
    print(f"[sweep {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_spec(text: str) -> Spec:
    """'name: preset --flag value ...' -> Spec."""
    name, sep, rest = text.partition(":")
    words = shlex.split(rest)
    if not sep or not name.strip() or not words:
        raise ValueError(f"--spec {text!r}: expected 'NAME: PRESET [FLAGS...]'")
    return Spec(name.strip(), words[0], expand_flags(words[1:]))


def expand_flags(words) -> tuple[str, ...]:
    """``{extra_dirs}`` in a flag stands for the two training-only folders (EXTRA_DIRS, comma-joined),
    so spec files hold no machine's absolute paths."""
    return tuple(str(w).replace("{extra_dirs}", ",".join(EXTRA_DIRS)) for w in words)


def read_specs(path: Path) -> list[Spec]:
    """A YAML/JSON list of {name, preset, flags} (flags: one string or a list of words)."""
    import yaml

    specs = []
    for item in yaml.safe_load(path.read_text()) or []:
        flags = item.get("flags") or []
        specs.append(Spec(str(item["name"]), str(item["preset"]),
                          expand_flags(shlex.split(flags) if isinstance(flags, str) else flags)))
    return specs


def uhd(*args: str, log_path: Path) -> None:
    """Run ``uhd ARGS`` (this checkout's, niced); its output goes to ``log_path``; a failure raises."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": "1"}
    cmd = ["nice", "-n", "10", sys.executable, "-m", "uhd_cli", *args]
    with open(log_path, "a") as out:
        out.write(f"$ {shlex.join(['uhd', *args])}\n")
        out.flush()
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"`uhd {args[0]}` failed ({proc.returncode}): {' | '.join(tail)}")


def spec_key(spec: Spec, train_args: list[str], data_fp: str) -> str:
    material = [SWEEP_VERSION, spec.preset, list(spec.flags), train_args, data_fp]
    return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:12]


def train_args(spec: Spec, data: Path, run_root: Path) -> list[str]:
    """The `uhd train` arguments; the script's own come last, so a spec cannot move the run or the data."""
    return ["train", "--preset", spec.preset, *spec.flags, "--image-dir", str(data), "--threads", "1",
            "--device", "cpu", "--seed", str(SEED), "--runs-dir", str(run_root), "--exp-name", "run",
            "--no-tui", "--log-interval", "1000000"]


def run_train(entry: Path, args: list[str]) -> dict[str, Any]:
    run_dir = entry / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a half-finished earlier attempt: start clean
    t0 = time.perf_counter()
    uhd(*args, log_path=entry / "train.out")
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    started = next(e for e in events if e["event"] == "RunStarted")
    maps = [e["map50"] for e in events if e["event"] == "EvalFinished"]
    data = next(e for e in events if e["event"] == "DataPrepared")
    last = [e["path"] for e in events if e["event"] == "CheckpointSaved" and e["kind"] == "last"][-1]
    return {"wall_s": time.perf_counter() - t0, "params": started["params"], "num_train": started["num_train"],
            "num_val": started["num_val"], "epochs": started["epochs"], "val_map50_last_in_loop": maps[-1] if maps else None,
            "small_boxes_dropped": data.get("num_small_boxes_dropped", 0),
            "last_checkpoint": last}


def run_eval(entry: Path, onnx: Path, folder: Path, tag: str) -> dict[str, Any]:
    out = entry / f"eval_{tag}.json"
    uhd("eval", str(onnx), "--image-dir", str(folder), "--json", str(out), "--overwrite", log_path=entry / "eval.out")
    report = json.loads(out.read_text())
    return {"map50": report["map_voc"], "coco_map": report["coco_map_50_95"], "num_images": report["num_images"]}


def run_bench(entry: Path, onnx: Path, runs: int) -> dict[str, Any]:
    out = entry / "bench.json"
    load = os.getloadavg()[0]
    uhd("bench", str(onnx), "--threads", "1", "--runs", str(runs), "--json", str(out), "--overwrite",
        log_path=entry / "bench.out")
    report = json.loads(out.read_text())
    return {"p50_ms": report["rows"][0]["p50_ms"], "macs": report["macs"], "loadavg": load}


def run_spec(spec: Spec, data: Path, cache: Path, data_fp: str, bench_runs: int) -> dict[str, Any]:
    """Every step of one spec that its result.json does not hold yet (saved after each step)."""
    entry = cache / spec.name
    entry.mkdir(parents=True, exist_ok=True)
    args = train_args(spec, data, entry)
    key = spec_key(spec, train_args(spec, data, Path("CACHE")), data_fp)  # moving the cache keeps it valid
    path = entry / "result.json"
    rec = json.loads(path.read_text()) if path.is_file() else {}
    if rec.get("key") != key:
        rec = {"name": spec.name, "preset": spec.preset, "flags": list(spec.flags), "key": key,
               "command": shlex.join(["uhd", *args])}

    def step(name: str, fn: Any) -> None:
        if name not in rec:
            log(f"  {spec.name}: {name}")
            rec[name] = fn()
            path.write_text(json.dumps(rec, indent=1))

    if "bench" in rec:
        log(f"  {spec.name}: cached ({path})")
    onnx = entry / "model.onnx"
    step("train", lambda: run_train(entry, args))
    step("export", lambda: (uhd("export", rec["train"]["last_checkpoint"], "--output", str(onnx), "--merge-postprocess",
                                "--overwrite", log_path=entry / "export.out"), {"onnx": str(onnx)})[1])
    split = json.loads((entry / "run" / "split.json").read_text()) if "val" not in rec or "train_split" not in rec else {}
    step("val", lambda: run_eval(entry, onnx, val_folder(data, split["val"], cache), "val"))
    step("train_split", lambda: run_eval(entry, onnx, val_folder(data, split["train"], cache), "train"))
    step("bench", lambda: run_bench(entry, onnx, bench_runs))
    return rec


def table(records: list[dict[str, Any]]) -> str:
    lines = ["| name | command flags | params | MACs | ms (p50, 1 thread) | val mAP@0.5 | val COCO mAP | "
             "train-split mAP@0.5 | train images | epochs | train min |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        t = r["train"]
        flags = shown_path(" ".join(["--preset", r["preset"], *r["flags"]])).replace("|", "\\|")
        lines.append(f"| {r['name']} | `{flags}` | {t['params']:,} | {fmt_macs(r['bench']['macs'])} | "
                     f"{r['bench']['p50_ms']:.3f} | {r['val']['map50']:.4f} | {r['val']['coco_map']:.4f} | "
                     f"{r['train_split']['map50']:.4f} | {t['num_train']} | {t['epochs']} | {t['wall_s'] / 60:.1f} |")
    return "\n".join(lines)


def write_report(out: Path, records: list[dict[str, Any]], meta: str) -> None:
    """The table between BEGIN and END of ``out`` (made with a heading when missing); the rest is kept."""
    block = f"{BEGIN}\n{meta}\n\n{table(records)}\n{END}"
    text = out.read_text() if out.is_file() else "# UltraTinyOD-style sweep\n\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        text = head + block + rest.partition(END)[2]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: synthetic data, cnn_s8 for 1 epoch, temp output")
    parser.add_argument("--spec", action="append", default=[], metavar="'NAME: PRESET FLAGS'", help="a run spec (repeatable)")
    parser.add_argument("--specs", type=Path, help="YAML/JSON list of {name, preset, flags}")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run these specs (others still reported from the cache)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="YOLO folder whose seeded split is used")
    parser.add_argument("--cache-dir", type=Path, help="per-spec runs + result.json (default runs/utod_sweep)")
    parser.add_argument("--out", type=Path, help="markdown report (default docs/utod_sweep.md; --quick: temp)")
    parser.add_argument("--bench-runs", type=int, help="timed calls of `uhd bench` (default 1000; --quick 20)")
    args = parser.parse_args(argv)
    try:
        specs = [parse_spec(s) for s in args.spec] + (read_specs(args.specs) if args.specs else [])
    except (ValueError, KeyError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.quick and not specs:
        specs = [Spec("cnn_s8_quick", "cnn_s8", ("--epochs", "1", "--batch-size", "16", "--num-workers", "0"))]
    specs = specs or list(SWEEP)
    cache = (args.cache_dir or REPO / "runs" / ("utod_sweep_quick" if args.quick else "utod_sweep")).resolve()
    out = (args.out or (Path(tempfile.mkdtemp(prefix="uhd_sweep_")) / "utod_sweep.md" if args.quick
                        else REPO / "docs" / "utod_sweep.md")).resolve()
    cache.mkdir(parents=True, exist_ok=True)
    if args.quick:  # keep the synthetic images' decode cache out of ~/.cache/uhd
        os.environ.setdefault("UHD_CACHE_DIR", str(cache / "decode_cache"))
    data = quick_data(cache) if args.quick else args.data.resolve()
    if not data.is_dir():
        print(f"error: --data {data} is not a folder", file=sys.stderr)
        return 2
    data_fp, records, failed = data_fingerprint(data), [], []
    for i, spec in enumerate(specs, 1):
        if args.only and spec.name not in args.only:
            path = cache / spec.name / "result.json"
            rec = json.loads(path.read_text()) if path.is_file() else {}
            if "bench" in rec:
                records.append(rec)
            continue
        log(f"[{i}/{len(specs)}] {spec.name}: uhd train --preset {spec.preset} {shlex.join(spec.flags)}")
        try:
            rec = run_spec(spec, data, cache, data_fp, args.bench_runs or (20 if args.quick else 1000))
        except (RuntimeError, OSError, KeyError, StopIteration) as exc:
            log(f"  {spec.name}: FAILED: {exc}")
            failed.append(spec.name)
            continue
        log(f"  {spec.name}: val mAP@0.5 {rec['val']['map50']:.4f}, train-split {rec['train_split']['map50']:.4f}, "
            f"{rec['bench']['p50_ms']:.3f} ms")
        records.append(rec)
    if records:
        meta = (f"Data: `{shown_path(str(data))}` (seed {SEED} split: val {records[0]['val']['num_images']} images), `--threads 1`, "
                f"CPU; latency: `uhd bench --threads 1`; written {time.strftime('%Y-%m-%d %H:%M')}.")
        write_report(out, records, meta)
        log(f"report: {out}")
    return 1 if failed or not records else 0


if __name__ == "__main__":
    raise SystemExit(main())
