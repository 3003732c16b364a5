"""`uhd anchors`: fit anchors to a YOLO folder's boxes (--auto) and/or report how given ones cover them."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from uhd_cli.errors import friendly_errors
from uhd_core.config import build_config
from uhd_core.errors import ConfigError


@friendly_errors
def anchors(
    image_dir: Path = typer.Option(..., "--image-dir", help="YOLO folder: images with same-stem .txt labels."),
    auto: bool = typer.Option(False, "--auto", help="Compute anchors: k-means (1 - IoU) then evolution."),
    given: Optional[str] = typer.Option(None, "--anchors", metavar="'W,H W,H ...'",
                                        help="Normalized anchors to evaluate (beside the computed ones with --auto)."),
    classes: str = typer.Option("0", "--classes", help="Comma-separated class ids whose boxes count."),
    num_anchors: int = typer.Option(5, "--num-anchors", min=1, help="Number of anchors to compute."),
    img_size: str = typer.Option("64x64", "--img-size", metavar="HxW", help="Input size, for the pixel column."),
    evolve: int = typer.Option(1000, "--evolve", min=0, help="Generations of genetic refinement (0 = k-means only)."),
    seed: int = typer.Option(42, "--seed", help="Random seed (k-means seeding, evolution, split)."),
    train_split_only: bool = typer.Option(False, "--train-split-only",
                                          help="Use only the training images of `uhd train`'s default split with --seed."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="PATH", help="Also write the numbers as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
) -> None:
    """Fit anchors to the boxes of a YOLO folder, or report how well given anchors cover them."""
    from rich.console import Console
    from rich.table import Table

    from uhd_core import anchors as core
    from uhd_core.data.dataset import load_box_sizes
    from uhd_core.outputs import check_output_file, write_output

    if not auto and given is None:
        raise ConfigError("give --auto to compute anchors and/or --anchors 'w,h ...' to evaluate them")
    if json_path is not None:  # before the fit: a bad target fails in a second
        check_output_file(json_path, flag="--json", overwrite=overwrite, input_dirs=[image_dir])
    cfg = build_config(overrides={"classes": classes, "img_size": img_size, "seed": seed})
    given_arr = core.parse_anchor_string(given) if given is not None else None
    wh = load_box_sizes(image_dir, cfg.classes, train_split_only=train_split_only,
                             train_split=cfg.train_split, val_split=cfg.val_split, seed=seed)

    reports: dict[str, Any] = {}
    anchor_sets: dict[str, Any] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if auto:
            anchor_sets["computed"] = core.fit_anchors(wh, num_anchors, seed, evolve)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if given_arr is not None:
        anchor_sets["given"] = given_arr
    for name, arr in anchor_sets.items():
        reports[name] = core.anchor_report(wh, arr)

    height, width = cfg.img_size
    console = Console()
    console.print(f"{len(wh)} boxes of classes {','.join(map(str, cfg.classes))} in {image_dir}")
    for name, report in reports.items():
        table = Table(title=f"{name} anchors")
        for col in ("#", "w", "h", f"w x h px @ {height}x{width}", "boxes best matched"):
            table.add_column(col, justify="right")
        for i, a in enumerate(report.anchors):
            table.add_row(str(i), f"{a.w:.4f}", f"{a.h:.4f}", f"{a.w * width:.1f} x {a.h * height:.1f}",
                          str(a.num_best_matched))
        console.print(table)
    summary = Table(title=f"coverage (matched: side ratio within {core.ANCHOR_T:g}x)")
    summary.add_column("metric")
    for name in reports:
        summary.add_column(name, justify="right")
    rows = [("mean best IoU", "mean_best_iou", "{:.4f}"), ("BPR", "bpr", "{:.4f}"),
            ("anchors above threshold / box", "anchors_above_threshold", "{:.2f}"), ("fitness", "fitness", "{:.4f}")]
    for label, attr, fmt in rows:
        summary.add_row(label, *(fmt.format(getattr(r, attr)) for r in reports.values()))
    console.print(summary)

    anchors_string = core.format_anchor_string(anchor_sets["computed" if auto else "given"])
    typer.echo(f'--anchors "{anchors_string}"')

    if json_path is not None:
        payload = {name: r.to_dict() for name, r in reports.items()}
        payload.update(anchors_string=anchors_string, num_boxes=int(len(wh)), image_dir=str(image_dir),
                       img_size=[height, width])
        write_output(json_path, json.dumps(payload, indent=2) + "\n", "--json")
        typer.echo(f"wrote {json_path}")
