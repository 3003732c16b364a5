"""`uhd predict`: detections on an image, a folder or a video (annotated copies, JSON, YOLO txt)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uhd_cli.errors import friendly_errors


@friendly_errors
def predict(
    model: Path = typer.Argument(..., help="Checkpoint (.pt) or exported model (.onnx)."),
    source: Path = typer.Option(..., "--source", help="An image, a folder of images (recursive) or a video file."),
    out: Path = typer.Option(Path("runs/predict"), "--out", help="Folder for annotated images / the annotated video."),
    conf_thresh: float = typer.Option(0.3, "--conf-thresh", min=0.0, max=1.0, help="Keep detections scoring at least this."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Also write every detection as JSON."),
    save_txt: bool = typer.Option(False, "--save-txt", help="Also write YOLO .txt results under OUT/labels/."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an --out folder that already holds files."),
) -> None:
    """Run a model on images or a video; boxes are normalized to each original image."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from uhd_core.predict import count_frames
    from uhd_core.predict import predict as run_predict

    total = count_frames(source) if source.exists() else None
    with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("predict", total=total)
        summary = run_predict(model, source, out, conf_thresh=conf_thresh, json_path=json_path, save_txt=save_txt,
                              overwrite=overwrite, progress=lambda n: bar.update(task, completed=n))
    for line in summary.skipped[:20]:
        typer.echo(f"skipped {line}", err=True)
    typer.echo(f"{summary.images} images, {summary.detections} detections at score >= {conf_thresh:g} -> {summary.out_dir}"
               + (f"; JSON {summary.json_path}" if summary.json_path else ""))
