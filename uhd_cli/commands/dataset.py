"""`uhd dataset synth`: an honest synthetic demo dataset (real numbers come from real data)."""

from __future__ import annotations

from pathlib import Path

import typer

from uhd_cli.errors import friendly_errors

app = typer.Typer(help="Dataset utilities.", no_args_is_help=True)


@app.command("synth")
@friendly_errors
def synth(
    out: Path = typer.Argument(..., help="Folder to write images + YOLO labels into (must not hold any yet)."),
    n: int = typer.Option(600, "--n", min=1, help="Number of images."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed, same files)."),
) -> None:
    """Write a SYNTHETIC person dataset (drawn figures on varied backgrounds) in YOLO format."""
    from rich.progress import Progress

    from uhd_core.data.synth import write_synthetic_dataset

    with Progress(transient=True, disable=not typer.get_text_stream("stdout").isatty()) as progress:
        task = progress.add_task("drawing", total=n)
        report = write_synthetic_dataset(out, n=n, seed=seed,
                                         progress=lambda i, total: progress.update(task, completed=i))
    typer.echo(f"wrote {report.num_images} synthetic images with {report.num_boxes} person boxes to {report.out_dir}")
