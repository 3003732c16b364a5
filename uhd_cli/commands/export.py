"""`uhd export`: a checkpoint -> a verified ONNX file (the original tool's flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uhd_cli.errors import friendly_errors
from uhd_core.config import build_config
from uhd_core.errors import ConfigError


@friendly_errors
def export(
    checkpoint_arg: Optional[Path] = typer.Argument(None, metavar="[CHECKPOINT]", help="Checkpoint (.pt) to export."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Checkpoint (.pt) to export (same as the argument)."),
    output: Optional[Path] = typer.Option(None, "--output", help="ONNX path (default: the checkpoint's path with .onnx)."),
    img_size: Optional[str] = typer.Option(None, "--img-size", metavar="HxW", help="Input size (default: the training size)."),
    opset: int = typer.Option(17, "--opset", min=11, help="ONNX opset."),
    merge_postprocess: bool = typer.Option(False, "--merge-postprocess",
                                           help="One output 'detections' [B, N, 6] = score, class_id, cx, cy, w, h."),
    dynamic: bool = typer.Option(False, "--dynamic", help="Dynamic batch, height and width."),
    topk: int = typer.Option(100, "--topk", min=1, help="Detections kept by the merged post-process."),
    use_ema: Optional[bool] = typer.Option(None, "--use-ema/--no-use-ema",
                                           help="Export the EMA weights (default: yes when the checkpoint has them)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Override the stored architecture (cnn, transformer)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Batch size of the traced (static) input."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output."),
) -> None:
    """Export a checkpoint to ONNX, verify it against PyTorch with ONNX Runtime, print a summary."""
    from rich.console import Console
    from rich.table import Table

    from uhd_core.export.api import export_checkpoint

    if checkpoint_arg and checkpoint and checkpoint_arg != checkpoint:
        raise ConfigError("give the checkpoint once: as the argument or as --checkpoint")
    path = checkpoint_arg or checkpoint
    if path is None:
        raise ConfigError("which checkpoint? `uhd export runs/<exp>/best_....pt` (or --checkpoint PATH)")
    size = build_config(overrides={"img_size": img_size}).img_size if img_size else None
    result = export_checkpoint(path, output, img_size=size, opset=opset, merge_postprocess=merge_postprocess,
                               dynamic=dynamic, topk=topk, use_ema=use_ema, arch=arch, batch_size=batch_size,
                               overwrite=overwrite)
    r = result.report
    table = Table(title="uhd export", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("file", str(result.path))
    table.add_row("size", f"{r.size_bytes / 1024:.1f} KiB")
    table.add_row("params", f"{r.params:,}")
    table.add_row("MACs", f"{r.macs:,}" if r.macs is not None else "n/a")
    table.add_row("opset", str(r.opset))
    table.add_row("weights", "EMA" if result.used_ema else "model (no EMA)")
    for name, shape in r.inputs.items():
        table.add_row(f"input {name}", str(shape))
    for name, shape in r.outputs.items():
        table.add_row(f"output {name}", str(shape))
    for name, diff in result.max_abs_diff.items():
        table.add_row(f"max |ORT - PyTorch| {name}", "not finite (NaN/inf)" if diff != diff else f"{diff:.2e}")
    if result.latency_ms is not None:
        table.add_row("ORT latency (1 thread, batch 1)", f"{result.latency_ms:.3f} ms")
    if result.opencv_dnn:
        table.add_row("cv2.dnn.readNetFromONNX", result.opencv_dnn)
    tracer_notes = [w for w in r.warnings if w.startswith("exporter:")]
    for warning in r.warnings:
        if warning not in tracer_notes:  # e.g. onnxsim fell back: worth reading
            table.add_row("warning", warning)
    if tracer_notes:
        table.add_row("exporter notes", f"{len(tracer_notes)} (torch.onnx tracer/constant-folding notices; harmless "
                                        "when verification passes)")
    Console().print(table)
    if not result.verified:
        typer.echo(f"error: {result.problem}", err=True)
        raise typer.Exit(1)
    typer.echo(f"verified: {result.path}")
