"""`uhd dataset-check`: report what is wrong with a YOLO folder; exit 0 clean, 1 problems, 2 usage errors."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional

import typer

from uhd_cli.errors import friendly_errors
from uhd_core.config import RunConfig, build_config
from uhd_core.errors import OutputError

_DEFAULT_MAX_PIXELS = RunConfig.model_fields["max_image_pixels"].default


@friendly_errors
def dataset_check(
    image_dir: Path = typer.Option(..., "--image-dir", help="YOLO folder: images with same-stem .txt labels."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Expected class ids (others are reported)."),
    img_size: str = typer.Option("64x64", "--img-size", metavar="HxW", help="Training size, for box sizes in pixels."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="PATH", help="Also write the report as JSON."),
    fix: Optional[Path] = typer.Option(None, "--fix", metavar="OUT_DIR",
                                       help="Write a repaired copy here (originals untouched; fix_report.json lists "
                                            "every change). Built in a temp folder and renamed into place when "
                                            "complete."),
    overwrite: bool = typer.Option(False, "--overwrite",
                                   help="Replace an existing --json file, or an earlier --fix result."),
    follow_symlinks: bool = typer.Option(False, "--follow-symlinks",
                                         help="Also read images and labels that are symlinks to files outside "
                                              "--image-dir (otherwise reported unreadable)."),
    max_image_pixels: int = typer.Option(_DEFAULT_MAX_PIXELS, "--max-image-pixels", min=1,
                                         help="Images whose header declares more pixels are reported and not "
                                              "decoded (as training skips them)."),
) -> None:
    """Check labels and images: malformed lines, bad coordinates, duplicates, unreadable files, box sizes."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress

    from uhd_core.data.check import FIX_REPORT, PROBLEMS, check_dataset, check_fix_target
    from uhd_core.data.files import shown
    from uhd_core.outputs import check_output_file, write_output

    cfg = build_config(overrides={"img_size": img_size, **({"classes": classes} if classes else {})})
    # The output rule before any work: neither output may be, or lie in, the checked folder.
    if fix is not None:
        check_fix_target(fix, image_dir, overwrite)
    if json_path is not None:
        check_output_file(json_path, flag="--json", overwrite=overwrite, input_dirs=[image_dir])
        if fix is not None and os.path.realpath(json_path).startswith(os.path.realpath(fix).rstrip(os.sep) + os.sep):
            raise OutputError(f"--json {shown(json_path)} lies inside the --fix folder {shown(fix)}, which --fix "
                              "replaces as a whole; choose a path outside it")
    with Progress(transient=True) as bar:
        task = bar.add_task("reading images", total=None)
        report = check_dataset(image_dir, cfg.classes if classes else (), cfg.img_size,
                               progress=lambda done, total: bar.update(task, completed=done, total=total),
                               follow_symlinks=follow_symlinks, max_pixels=max_image_pixels)
    console = Console()
    counts = report.counts()
    _print_report(console, report, counts, cfg.img_size)
    if json_path is not None:
        write_output(json_path, json.dumps(dataclasses.asdict(report), indent=1), flag="--json")
    if fix is not None:
        from uhd_core.data.check import fix_dataset

        fixed = fix_dataset(image_dir, fix, overwrite=overwrite, follow_symlinks=follow_symlinks,
                            max_pixels=max_image_pixels)
        console.print(f"--fix wrote {fixed.images_written} images to {escape(shown(fix))}: "
                      f"{len(fixed.dropped_images)} images left out, {len(fixed.converted)} converted to 8-bit RGB, "
                      f"{len(fixed.dropped_lines)} label lines dropped, {len(fixed.clipped_lines)} clipped "
                      f"(every change: {escape(shown(fix / FIX_REPORT))})")
    if report.clean:
        console.print("[green]clean[/green]: nothing that would break or silently change training")
        return
    problems = sum(counts[k] for k in PROBLEMS)
    console.print(f"[red]{problems} problem(s) found[/red]")
    raise typer.Exit(1)


def _print_report(console, report, counts: dict[str, int], img_size: tuple[int, int]) -> None:
    """The findings, boxes-per-class and box-size tables of a DatasetReport, and the under-one-cell shares."""
    from rich.markup import escape
    from rich.table import Table

    from uhd_core.data.check import INFO, PROBLEMS

    summary = Table(title=f"{escape(report.image_dir)}: {report.images} images, {report.label_files} label files, "
                          f"{report.boxes} boxes")
    summary.add_column("finding")
    summary.add_column("count", justify="right")
    summary.add_column("first examples")
    for kind in [*sorted(PROBLEMS), *INFO]:
        if counts.get(kind):
            examples = [escape(f"{f.where} {f.detail}".strip()) for f in report.findings if f.kind == kind][:3]
            summary.add_row(("[red]" if kind in PROBLEMS else "") + kind, str(counts[kind]), "\n".join(examples))
    console.print(summary)
    classes_table = Table(title="boxes per class")
    classes_table.add_column("class", justify="right")
    classes_table.add_column("boxes", justify="right")
    for c, n in sorted(report.class_histogram.items()):
        classes_table.add_row(str(c), str(n))
    console.print(classes_table)
    sizes = Table(title=f"box size (larger side) in pixels at {img_size[0]}x{img_size[1]}")
    sizes.add_column("size")
    sizes.add_column("boxes", justify="right")
    for name, n in report.size_histogram.items():
        sizes.add_row(name, str(n))
    console.print(sizes)
    console.print("smaller than one output cell: " + ", ".join(
        f"stride {s}: {share:.1%}" for s, share in report.under_one_cell.items()))
