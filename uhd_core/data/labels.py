"""YOLO label files: ``class cx cy w h`` per line, all normalized to 0..1.

Bad lines are skipped and reported (file, line number, reason) instead of failing the run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from uhd_core.data.files import FileRefused, read_dataset_file, shown
from uhd_core.errors import bounded
from uhd_core.limits import MAX_CLASS_ID

# Labels written by other tools are often a hair outside 0..1 (float rounding); clip within this.
_COORD_TOLERANCE = 1e-6


@dataclass(frozen=True)
class LabelIssue:
    path: str
    line: int  # 1-based; 0 = the whole file
    reason: str

    def __str__(self) -> str:
        where = f"{shown(self.path)}:{self.line}" if self.line else shown(self.path)
        return f"{where}: {self.reason}"


@dataclass
class ParsedLabels:
    """Boxes of one image. ``boxes`` (N, 4) float32 cxcywh normalized; ``classes`` (N,) int64 source ids."""

    boxes: np.ndarray
    classes: np.ndarray
    issues: list[LabelIssue] = field(default_factory=list)


def parse_label_text(text: str, source: str = "<labels>") -> ParsedLabels:
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    issues: list[LabelIssue] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            issues.append(LabelIssue(source, lineno, "empty line"))
            continue
        fields = line.split()
        if len(fields) != 5:
            issues.append(LabelIssue(source, lineno, f"expected 5 fields 'class cx cy w h', got {len(fields)}"))
            continue
        try:
            cls_f = float(fields[0])
            cx, cy, w, h = (float(v) for v in fields[1:])
        except ValueError:
            issues.append(LabelIssue(source, lineno, f"not numbers: {bounded(line, 60)!r}"))
            continue
        if not cls_f.is_integer() or cls_f < 0:
            issues.append(LabelIssue(source, lineno, f"class must be a non-negative integer, got {fields[0]!r}"))
            continue
        if cls_f > MAX_CLASS_ID:
            issues.append(LabelIssue(source, lineno, f"class id {fields[0][:20]!r} is larger than {MAX_CLASS_ID}"))
            continue
        values = np.array([cx, cy, w, h])
        if not np.all(np.isfinite(values)):
            issues.append(LabelIssue(source, lineno, "non-finite coordinate"))
            continue
        if w <= 0 or h <= 0:
            issues.append(LabelIssue(source, lineno, f"w/h must be > 0, got w={w:g} h={h:g}"))
            continue
        if np.any(values < -_COORD_TOLERANCE) or np.any(values > 1 + _COORD_TOLERANCE):
            issues.append(LabelIssue(source, lineno, "coordinates outside 0..1"))
            continue
        x1, y1 = max(cx - w / 2, 0.0), max(cy - h / 2, 0.0)
        x2, y2 = min(cx + w / 2, 1.0), min(cy + h / 2, 1.0)
        # Checked in float32, the dtype boxes are stored in: a 1e-46 wide box is > 0 only in float64.
        if np.float32(x2 - x1) <= 0 or np.float32(y2 - y1) <= 0:
            issues.append(LabelIssue(source, lineno, "box has no area inside the image"))
            continue
        boxes.append(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1))
        classes.append(int(cls_f))
    return ParsedLabels(
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        classes=np.asarray(classes, dtype=np.int64),
        issues=issues,
    )


def read_label_file(path: Path, root: Path | None = None, follow_symlinks: bool = False) -> ParsedLabels:
    """A missing label file means 'no boxes' (a negative image), not an error.

    Read through the dataset file guard (``uhd_core.data.files``): a FIFO, device or socket, and
    (with ``root``, unless ``follow_symlinks``) a file whose real path leaves ``root``, is not read;
    it is one issue (line 0) and no boxes.
    """
    empty = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
    if not os.path.lexists(path):
        return ParsedLabels(*empty)
    try:
        # utf-8-sig: Windows editors write a byte-order mark that would otherwise spoil line 1.
        text = read_dataset_file(path, root, follow_symlinks).decode("utf-8-sig", errors="strict")
    except FileRefused as exc:
        return ParsedLabels(*empty, [LabelIssue(str(path), 0, f"not read: {exc}")])
    except UnicodeDecodeError as exc:
        return ParsedLabels(*empty, [LabelIssue(str(path), 0, f"unreadable ({bounded(exc)})")])
    return parse_label_text(text, str(path))


def select_classes(parsed: ParsedLabels, classes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Keep boxes of the target classes and map source ids to contiguous 0..K-1 in `classes` order."""
    lookup = {src: idx for idx, src in enumerate(classes)}
    keep = np.array([c in lookup for c in parsed.classes.tolist()], dtype=bool)
    mapped = np.array([lookup[c] for c in parsed.classes[keep].tolist()], dtype=np.int64)
    return parsed.boxes[keep], mapped
