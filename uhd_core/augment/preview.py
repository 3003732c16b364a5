"""`uhd aug-preview`: what an augmentation pipeline does to real images, as a PNG grid and op statistics.

The grid has one row per source image: the original first, then ``variants`` augmented versions
(or, with ``per_op``, one column per active op with only that op applied). Every tile is upscaled
with nearest-neighbour by ``scale`` (64x64 samples are too small to judge), boxes are drawn in
green, and a caption under each tile names the ops that changed it (see ``caption``). Partner samples for Mosaic,
MixUp and CopyPaste come from the same preview images. The pipeline object is the one training uses.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from uhd_core.augment.pipeline import AugmentPipeline, OpTrace

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]  # image (H, W, 3) uint8 RGB, boxes cxcywh, labels

CAPTION_LINE_PX = 11
CAPTION_LINES = 3
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_FONT_SCALE = 0.32
_BOX_COLOUR = (0, 220, 0)  # BGR
#: Ops that only drop boxes and never touch the image: they fire on every sample, so a caption names
#: them only when they dropped a box (else every tile read "..., RemoveOutliers").
BOX_FILTER_OPS = frozenset({"RemoveOutliers"})


@dataclass
class OpStats:
    """Per-op statistics over all augmented tiles of a preview."""

    name: str
    prob: float
    applied: int = 0
    seconds: float = 0.0
    boxes_dropped: int = 0

    @property
    def mean_ms(self) -> float:
        return 1000.0 * self.seconds / self.applied if self.applied else 0.0


@dataclass
class Preview:
    grid: np.ndarray  # (rows * tile_h, cols * tile_w, 3) uint8 BGR, ready for cv2.imwrite
    stats: list[OpStats] = field(default_factory=list)
    rows: int = 0
    cols: int = 0


def _wrap(text: str, width_px: int) -> list[str]:
    """Greedy word wrap of comma-separated op names to the tile width."""
    lines, line = [], ""
    for word in text.split(" "):
        trial = f"{line} {word}".strip()
        (w, _), _ = cv2.getTextSize(trial, _FONT, _FONT_SCALE, 1)
        if w > width_px and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    if len(lines) > CAPTION_LINES:
        lines = lines[: CAPTION_LINES - 1] + [lines[CAPTION_LINES - 1] + " ..."]
    return lines


def caption(trace: Sequence[OpTrace]) -> str:
    """The ops that changed a tile, in order: box filters only with the boxes they dropped."""
    names = []
    for t in trace:
        dropped = t.boxes_in - t.boxes_out
        if t.name not in BOX_FILTER_OPS:
            names.append(t.name)
        elif dropped > 0:
            names.append(f"{t.name} -{dropped} box{'es' if dropped > 1 else ''}")
    return ", ".join(names) or "(no op fired)"


def render_tile(image: np.ndarray, boxes: np.ndarray, caption: str, scale: int) -> np.ndarray:
    """(H, W, 3) RGB + cxcywh boxes -> (H*scale + caption strip, W*scale, 3) BGR tile."""
    h, w = image.shape[:2]
    big = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), (w * scale, h * scale), interpolation=cv2.INTER_NEAREST)
    for cx, cy, bw, bh in np.asarray(boxes, dtype=np.float32).reshape(-1, 4):
        x1, y1 = int(round((cx - bw / 2) * w * scale)), int(round((cy - bh / 2) * h * scale))
        x2, y2 = int(round((cx + bw / 2) * w * scale)), int(round((cy + bh / 2) * h * scale))
        cv2.rectangle(big, (x1, y1), (x2, y2), _BOX_COLOUR, 1)
    strip = np.full((CAPTION_LINES * CAPTION_LINE_PX + 3, w * scale, 3), 255, dtype=np.uint8)
    for i, line in enumerate(_wrap(caption, w * scale - 4)):
        cv2.putText(strip, line, (2, (i + 1) * CAPTION_LINE_PX), _FONT, _FONT_SCALE, (0, 0, 0), 1, cv2.LINE_AA)
    tile = np.concatenate([big, strip], axis=0)
    tile[:, -1] = 128  # a 1-pixel separator between columns
    return tile


def make_preview(pipeline: AugmentPipeline, samples: Sequence[Sample], *, variants: int = 4, seed: int = 0,
                 scale: int = 4, per_op: bool = False) -> Preview:
    """Augment every sample ``variants`` times (or once per active op with ``per_op``) and tile the results."""
    if not samples:
        raise ValueError("aug-preview needs at least one image")
    def source(rng: np.random.Generator) -> Sample:
        return samples[int(rng.integers(len(samples)))]

    probs = {spec.name: spec.prob for spec in pipeline.specs}
    stats = {name: OpStats(name, probs.get(name, 0.0)) for name in pipeline.active_ops}
    columns = list(pipeline.active_ops) if per_op else [None] * variants
    # One untimed call per op first: some pay a one-off set-up on first use (albumentations' CLAHE
    # ~90 ms), which would otherwise dominate its mean in a small preview.
    warm_image, warm_boxes, warm_labels = samples[0]
    for name in pipeline.active_ops:
        pipeline(warm_image, warm_boxes, warm_labels, np.random.default_rng(seed), source=source, force=name)
    rows = []
    for i, (image, boxes, labels) in enumerate(samples):
        tiles = [render_tile(image, boxes, "original", scale)]
        for j, forced in enumerate(columns):
            rng = np.random.default_rng((seed, i, j))
            trace: list[OpTrace] = []
            out, out_boxes, _ = pipeline(image, boxes, labels, rng, source=source, trace=trace, force=forced)
            for t in trace:
                s = stats[t.name]
                s.applied += 1
                s.seconds += t.seconds
                s.boxes_dropped += max(0, t.boxes_in - t.boxes_out)
            tiles.append(render_tile(out, out_boxes, caption(trace), scale))
        rows.append(np.concatenate(tiles, axis=1))
    return Preview(np.concatenate(rows, axis=0), list(stats.values()), rows=len(rows), cols=1 + len(columns))


def load_preview_samples(image_dir: Path, img_size: tuple[int, int], n: int, seed: int,
                         classes: tuple[int, ...] = (0,), interpolation: str = "area",
                         cache_dir: Path | None = None) -> list[Sample]:
    """``n`` images of a YOLO folder (a seeded choice), decoded and resized as training does."""
    from uhd_core.data.dataset import decode_all, scan_yolo_folder
    from uhd_core.errors import DataError

    index = scan_yolo_folder(image_dir, classes)
    if len(index) == 0:
        raise DataError(f"--image-dir {image_dir}: no image has a box of class {','.join(map(str, classes))}")
    order = np.random.default_rng(seed).permutation(len(index))[:n]
    files = [index.files[i] for i in sorted(order)]
    decoded = decode_all(index.root, files, img_size, interpolation, cache_dir)
    position = {name: i for i, name in enumerate(index.files)}
    return [(decoded.images[k], index.boxes[position[f]], index.labels[position[f]])
            for k, f in enumerate(files) if decoded.ok[k]]


def synthetic_samples(img_size: tuple[int, int], n: int, seed: int) -> list[Sample]:
    """``n`` images of the synthetic demo data (drawn into a temporary folder) for a preview without data."""
    from uhd_core.data.synth import write_synthetic_dataset

    with tempfile.TemporaryDirectory(prefix="uhd_aug_preview_") as tmp:
        folder = Path(tmp) / "synth"
        write_synthetic_dataset(folder, n=n + max(2, n // 4), seed=seed)  # spare: a few images hold no person
        return load_preview_samples(folder, img_size, n, seed)


def write_png(path: Path, image: np.ndarray, flag: str = "--out") -> None:
    """Encode (H, W, 3) BGR as PNG and write it atomically (temp file + rename); an OS failure
    (read-only disk, disk full) is one OutputError line naming ``path`` (``uhd_core.outputs``)."""
    from uhd_core.outputs import encode_image, write_output

    write_output(Path(path), encode_image(image, ".png"), flag)
