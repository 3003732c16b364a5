"""`uhd bench`: ONNX Runtime latency of an exported model per (threads, batch) setting."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uhd_core.errors import CheckpointError, ConfigError, bounded, first_line
from uhd_core.export.onnx_common import ort_source
from uhd_core.export.onnx_macs import count_macs
from uhd_core.export.onnx_meta import REEXPORT, load_export


@dataclass
class BenchRow:
    threads: int
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    imgs_per_s: float  # batch / mean latency
    gmacs_per_s: float | None  # MACs per image x images/s


def bench_onnx(path: str | Path, threads: list[int], batches: list[int], runs: int = 200,
               warmup: int = 20) -> tuple[list[BenchRow], int | None, tuple[int, int]]:
    """Latency percentiles of ``runs`` calls per setting after ``warmup`` calls, on random inputs.

    Returns (rows, MACs per image at the export size or None, the (H, W) used). A static-batch
    export only runs at its own batch size: other batch sizes are a ConfigError.
    """
    import onnxruntime as ort

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give an exported model (.onnx)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such ONNX file")
    _, meta = load_export(path)  # one line for an empty, damaged or foreign file
    h, w = meta["preprocess"]["img_size"]
    source = ort_source(path)
    try:
        probe = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise CheckpointError(f"{bounded(path)}: ONNX Runtime cannot load it ({first_line(exc)}); "
                              f"{REEXPORT}") from None
    batch_dim = probe.get_inputs()[0].shape[0]
    name = probe.get_inputs()[0].name
    if isinstance(batch_dim, int) and any(b != batch_dim for b in batches):
        raise ConfigError(f"{path} was exported with a static batch of {batch_dim}; use --batch {batch_dim} "
                          "or export with --dynamic")
    try:
        macs = count_macs(path, {name: [1, 3, h, w]})
    except Exception:  # noqa: BLE001 - a count we cannot make is reported as n/a, not an error
        macs = None
    rows = []
    for t in threads:
        options = ort.SessionOptions()
        options.intra_op_num_threads = t
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        for b in batches:
            x = np.random.default_rng(0).random((b, 3, h, w), dtype=np.float32)
            for _ in range(warmup):
                session.run(None, {name: x})
            times = np.empty(runs)
            for i in range(runs):
                t0 = time.perf_counter()
                session.run(None, {name: x})
                times[i] = time.perf_counter() - t0
            ms = times * 1000.0
            ips = b / times.mean()
            rows.append(BenchRow(t, b, float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                                 float(np.percentile(ms, 99)), float(ips),
                                 macs * ips / 1e9 if macs is not None else None))
    return rows, macs, (h, w)
