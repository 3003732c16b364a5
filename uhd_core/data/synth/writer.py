"""Writing the synthetic set: one .jpg/.txt pair per image, each from its own RNG (see the package doc)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from uhd_core.data.synth.scene import _render_image

_JPEG_QUALITY = 90


@dataclass(frozen=True)
class SynthReport:
    """What :func:`write_synthetic_dataset` wrote: ``num_images`` .jpg/.txt pairs holding
    ``num_boxes`` person boxes in total, in ``out_dir``."""

    out_dir: Path
    num_images: int
    num_boxes: int


def _yolo_lines(boxes, w: int, h: int) -> str:
    lines = []
    for x1, y1, x2, y2 in boxes:
        cx, cy = (x1 + x2) / (2.0 * w), (y1 + y2) / (2.0 * h)
        lines.append(f"0 {cx:.6f} {cy:.6f} {(x2 - x1) / w:.6f} {(y2 - y1) / h:.6f}")
    return "".join(line + "\n" for line in lines)


def _image_rng(seed: int, index: int) -> np.random.Generator:
    # spawn_key=(index,) is what SeedSequence(seed).spawn() hands child `index`: independent
    # streams per image that do not depend on how many images are written.
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _atomic_write(path: Path, data: bytes) -> None:
    # outputs.atomic_write_bytes without its two fsyncs: thousands of small files of regenerable
    # synthetic data; a crash leaves whole files or none, which is all a rerun needs.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_synthetic_dataset(
    out_dir: Path,
    n: int = 600,
    seed: int = 0,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> SynthReport:
    """Write ``n`` synthetic images with YOLO labels directly into ``out_dir``.

    Files are ``synth_{i:06d}.jpg`` (RGB content, JPEG quality 90, width and height each
    96..256 px) and ``synth_{i:06d}.txt`` with one ``0 cx cy w h`` line per figure: class 0 =
    person, cxcywh normalized 0..1 by the image size, 6 decimals, the tight box of the figure's
    in-image pixels. Images hold 1..3 figures (about 5% hold none and get an empty .txt).

    Same ``seed`` gives byte-identical files; image ``i`` does not depend on ``n``.
    ``progress(done, n)`` is called after each image with ``done`` = 1..n.

    Raises FileExistsError if ``out_dir`` already holds any .jpg or .txt file (nothing is
    touched then), ValueError for a negative ``n`` or ``seed``.
    """
    out_dir = Path(out_dir)
    if n < 0 or seed < 0:
        raise ValueError(f"n and seed must be >= 0, got n={n}, seed={seed}")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if any(p.suffix.lower() in (".jpg", ".txt") for p in out_dir.iterdir() if p.is_file()):
            raise FileExistsError(f"{out_dir} already contains .jpg/.txt files; refusing to overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)

    num_boxes = 0
    for i in range(n):
        img, boxes = _render_image(_image_rng(seed, i))
        h, w = img.shape[:2]
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for image {i}")
        stem = f"synth_{i:06d}"
        # Label first: a reader that sees an image can always trust its label file exists.
        _atomic_write(out_dir / f"{stem}.txt", _yolo_lines(boxes, w, h).encode("ascii"))
        _atomic_write(out_dir / f"{stem}.jpg", jpg.tobytes())
        num_boxes += len(boxes)
        if progress is not None:
            progress(i + 1, n)
    return SynthReport(out_dir=out_dir, num_images=n, num_boxes=num_boxes)
