"""`uhd aug-preview`: render what an augmentation YAML does to real images, before training on it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from uhd_cli.errors import friendly_errors
from uhd_core.config import ORIGINAL_DEFAULT_AUG_CONFIG, build_config
from uhd_core.errors import ConfigError, DataError

DEFAULT_SYNTH_DIR = Path("data/synth")


@friendly_errors
def aug_preview(
    config: str = typer.Argument(ORIGINAL_DEFAULT_AUG_CONFIG, help="Augmentation YAML ('uhd/aug.yaml' = the built-in default)."),
    image_dir: Optional[Path] = typer.Option(None, "--image-dir", help="YOLO folder (default: data/synth, or a few "
                                             "synthetic images drawn for the preview)."),
    n: int = typer.Option(16, "--n", min=1, max=256, help="Number of source images (one grid row each)."),
    variants: int = typer.Option(4, "--variants", min=1, max=16, help="Augmented versions per image."),
    img_size: str = typer.Option("64x64", "--img-size", metavar="HxW", help="Training input size."),
    seed: int = typer.Option(0, "--seed", help="Random seed (image choice and augmentation)."),
    out: Path = typer.Option(Path("aug_preview.png"), "--out", help="PNG to write."),
    scale: int = typer.Option(4, "--scale", min=1, max=16, help="Nearest-neighbour upscale of each tile."),
    per_op: bool = typer.Option(False, "--per-op", help="One column per op, with only that op applied (forced on)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
) -> None:
    """Render a grid of augmented samples (boxes drawn, fired ops captioned) and print per-op statistics."""
    from rich.console import Console
    from rich.table import Table

    from uhd_core.augment.pipeline import load_augment_pipeline
    from uhd_core.augment.preview import load_preview_samples, make_preview, synthetic_samples, write_png
    from uhd_core.outputs import check_output_file

    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the PNG file's path")
    cfg = build_config(overrides={"img_size": img_size, "seed": seed, "aug_config": config})
    if image_dir is None and DEFAULT_SYNTH_DIR.is_dir():
        image_dir = DEFAULT_SYNTH_DIR
    # Before the rendering: never the aug YAML itself, nothing inside the image folder.
    config_file = Path(cfg.aug_config)
    check_output_file(out, flag="--out", overwrite=overwrite, inputs=[config_file if config_file.is_file() else None],
                      input_dirs=[image_dir])
    pipeline = load_augment_pipeline(cfg.aug_config, flag="aug-preview CONFIG")
    if image_dir is None:
        samples = synthetic_samples(cfg.img_size, n, seed)
        where = "synthetic images"
    else:
        samples = load_preview_samples(image_dir, cfg.img_size, n, seed)
        where = str(image_dir)
        if not samples:
            raise DataError(f"--image-dir {image_dir}: none of the chosen images could be decoded")
    preview = make_preview(pipeline, samples, variants=variants, seed=seed, scale=scale, per_op=per_op)
    write_png(out, preview.grid, flag="--out")

    table = Table(title=f"{config}: {len(samples)} images from {where}, "
                        f"{'one column per op' if per_op else f'{variants} variants each'}")
    for column, justify in (("op", "left"), ("prob", "right"), ("applied", "right"), ("mean ms", "right"),
                            ("boxes dropped", "right")):
        table.add_column(column, justify=justify)
    for s in preview.stats:
        table.add_row(s.name, f"{s.prob:g}", str(s.applied), f"{s.mean_ms:.3f}", str(s.boxes_dropped))
    Console().print(table)
    typer.echo(f"wrote {out} ({preview.grid.shape[1]}x{preview.grid.shape[0]} px, {preview.rows} rows x "
               f"{preview.cols} columns)")
