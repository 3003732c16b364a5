"""`uhd eval`: mAP of a checkpoint or an exported ONNX file on a YOLO folder."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer

from uhd_cli.errors import friendly_errors
from uhd_core.config import build_config


@friendly_errors
def eval_model(
    model: Path = typer.Argument(..., help="Checkpoint (.pt) or exported model (.onnx)."),
    image_dir: Path = typer.Option(..., "--image-dir", help="YOLO folder to score on (every labelled image)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Source class ids (default: the model's)."),
    conf_thresh: float = typer.Option(0.001, "--conf-thresh", min=0.0, max=1.0,
                                      help="Score threshold for precision/recall/F1 (mAP uses every detection)."),
    iou: float = typer.Option(0.5, "--iou", min=0.05, max=0.95, help="IoU threshold of the VOC mAP."),
    json_path: Optional[Path] = typer.Option(None, "--json", metavar="PATH", help="Also write the numbers as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --json file."),
) -> None:
    """Score a model: VOC mAP@IoU, COCO mAP@[.5:.95] and AP50, per-class AP, P/R/F1, best-F1 threshold."""
    from rich.console import Console
    from rich.table import Table

    from uhd_core.evaluation import evaluate_model
    from uhd_core.outputs import check_output_file, write_output

    if json_path is not None:  # before the evaluation: a bad target fails in a second, not after it
        check_output_file(json_path, flag="--json", overwrite=overwrite, inputs=[model], input_dirs=[image_dir])
    class_ids = build_config(overrides={"classes": classes}).classes if classes else None
    report = evaluate_model(model, image_dir, classes=class_ids, conf_thresh=conf_thresh, iou=iou)
    table = Table(title=f"uhd eval {model.name}: {report.num_images} images of {report.image_dir}", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row(f"mAP@{iou:g} (VOC all-point)", f"{report.map_voc:.5f}")
    table.add_row("COCO mAP@[.5:.95]", f"{report.coco_map_50_95:.5f}")
    table.add_row("COCO AP50", f"{report.coco_map_50:.5f}")
    for c, ap in sorted(report.per_class.items()):
        table.add_row(f"AP class {c} ({report.num_gt.get(c, 0)} boxes)", f"{ap:.5f}")
    table.add_row(f"precision / recall / F1 at score >= {conf_thresh:g}",
                  f"{report.precision:.3f} / {report.recall:.3f} / {report.f1:.3f}")
    table.add_row("best F1 (at score threshold)", f"{report.best_f1:.3f} (at {report.best_f1_threshold:.3f})")
    table.add_row("images/s (model + decode)", f"{report.imgs_per_s:.0f}")
    Console().print(table)
    if json_path is not None:
        write_output(json_path, json.dumps(dataclasses.asdict(report), indent=1), "--json")
