"""`uhd bench`: latency percentiles and throughput of an exported ONNX model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from uhd_cli.errors import friendly_errors
from uhd_core.errors import ConfigError


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ConfigError(f"{flag}: expected comma-separated positive integers like 1,2 — got {text!r}")
    return values


@friendly_errors
def bench(
    model: Path = typer.Argument(..., help="Exported model (.onnx, from `uhd export`)."),
    threads: str = typer.Option("1", "--threads", help="Comma-separated intra-op thread counts."),
    batch: str = typer.Option("1", "--batch", help="Comma-separated batch sizes (a static export: its own only)."),
    runs: int = typer.Option(200, "--runs", min=1, help="Timed calls per setting (after 20 warm-up calls)."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="PATH", help="Also write the rows as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
) -> None:
    """ONNX Runtime (CPU) latency p50/p90/p99 and throughput per (threads, batch), with MACs and GMAC/s."""
    from rich.console import Console
    from rich.table import Table

    from uhd_core.export.bench import bench_onnx
    from uhd_core.outputs import check_output_file, write_output

    if json_path is not None:  # before the timing runs
        check_output_file(json_path, flag="--json", overwrite=overwrite, inputs=[model])
    rows, macs, (h, w) = bench_onnx(model, _int_list(threads, "--threads"), _int_list(batch, "--batch"), runs)
    table = Table(title=f"uhd bench {model.name}: {h}x{w}, {runs} runs per row, "
                        f"{'%s MACs/image' % f'{macs:,}' if macs is not None else 'MACs n/a'}")
    for column in ("threads", "batch", "p50 ms", "p90 ms", "p99 ms", "images/s", "GMAC/s"):
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(str(r.threads), str(r.batch), f"{r.p50_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.p99_ms:.3f}",
                      f"{r.imgs_per_s:.0f}", f"{r.gmacs_per_s:.2f}" if r.gmacs_per_s is not None else "n/a")
    Console().print(table)
    if json_path is not None:
        write_output(json_path, json.dumps({"model": str(model), "img_size": [h, w], "macs": macs,
                                            "rows": [dataclasses.asdict(r) for r in rows]}, indent=1), "--json")
