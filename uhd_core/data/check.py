"""`uhd dataset-check`: everything wrong (or worth knowing) about a YOLO folder, before training on it.

Reads every label line itself (training's parser skips bad lines; this one names them) and decodes
every image once with OpenCV (threads; cv2 releases the GIL) to find unreadable, truncated,
grayscale / 16-bit / 4-channel files and duplicate contents.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from uhd_core.data.dataset import require_image_dir
from uhd_core.data.images import IMAGE_SUFFIXES
from uhd_core.data.labels import MAX_CLASS_ID
from uhd_core.errors import ConfigError, RunDirError

#: A box smaller than one output cell at these strides (in input pixels) is hard to see for the model.
STRIDES = (4, 8, 16)
EXTREME_ASPECT = 4.0
_TOL = 1e-6


@dataclass
class Finding:
    kind: str  # e.g. "malformed line", "class not in --classes", "duplicate image"
    where: str  # "file" or "file:line"
    detail: str = ""


@dataclass
class CheckReport:
    image_dir: str
    images: int = 0
    label_files: int = 0
    boxes: int = 0
    class_histogram: dict[int, int] = field(default_factory=dict)
    #: box side (max of w, h) in input pixels at --img-size: bucket upper bound -> count
    size_histogram: dict[str, int] = field(default_factory=dict)
    #: share of boxes whose larger side is under one output cell, per stride
    under_one_cell: dict[int, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not any(f.kind in PROBLEMS for f in self.findings)

    def counts(self) -> Counter:
        return Counter(f.kind for f in self.findings)


#: Kinds that make a folder "not clean" (exit 1); the rest are information.
PROBLEMS = frozenset({
    "unreadable image", "malformed line", "class not in --classes", "coordinates outside 0..1",
    "w or h <= 0", "box extends past the image", "duplicate box", "duplicate image", "unreadable label file",
})
INFO = ("image without label file", "empty label file", "grayscale image", "16-bit image", "4-channel image",
        "extreme aspect ratio")


def parse_line(line: str) -> tuple[int, float, float, float, float] | None:
    """``class cx cy w h`` -> (class, cx, cy, w, h), or None when malformed (field count, numbers, a
    negative, fractional or too large (> MAX_CLASS_ID) class, non-finite values). Range checks of the
    coordinates are the callers'."""
    fields = line.split()
    if len(fields) != 5:
        return None
    try:
        cls_f, cx, cy, w, h = (float(v) for v in fields)
    except ValueError:
        return None
    if not cls_f.is_integer() or not 0 <= cls_f <= MAX_CLASS_ID or not np.isfinite([cx, cy, w, h]).all():
        return None
    return int(cls_f), cx, cy, w, h


def _check_image(path: Path) -> tuple[str | None, list[str], tuple[int, int] | None]:
    """(sha1 of the bytes or None, notes, (h, w))."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return None, [f"unreadable image: {exc.strerror}"], None
    if not data:
        return None, ["unreadable image: empty file"], None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        return None, ["unreadable image: not decodable (truncated or not an image)"], None
    notes = []
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        notes.append("grayscale image")
    elif image.shape[2] == 4:
        notes.append("4-channel image")
    if image.dtype == np.uint16:
        notes.append("16-bit image")
    h, w = image.shape[:2]
    if max(h, w) / max(1, min(h, w)) > EXTREME_ASPECT:
        notes.append(f"extreme aspect ratio: {w}x{h}")
    return hashlib.sha1(data).hexdigest(), notes, (h, w)


def _check_labels(path: Path, classes: set[int], report: CheckReport, sides: list[float],
                  img_size: tuple[int, int]) -> None:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        report.findings.append(Finding("unreadable label file", str(path), str(exc)))
        return
    lines = [(i, raw.strip()) for i, raw in enumerate(text.splitlines(), start=1)]
    if not any(line for _, line in lines):
        report.findings.append(Finding("empty label file", str(path)))
        return
    seen: set[tuple[str, ...]] = set()
    for lineno, line in lines:
        if not line:
            continue
        where = f"{path}:{lineno}"
        fields = line.split()
        parsed = parse_line(line)
        if parsed is None:
            report.findings.append(Finding("malformed line", where, line[:80]))
            continue
        cls, cx, cy, w, h = parsed
        if tuple(fields) in seen:
            report.findings.append(Finding("duplicate box", where, line[:80]))
        seen.add(tuple(fields))
        if classes and cls not in classes:
            report.findings.append(Finding("class not in --classes", where, f"class {cls}"))
        if w <= 0 or h <= 0:
            report.findings.append(Finding("w or h <= 0", where, line[:80]))
            continue
        if min(cx, cy, w, h) < -_TOL or max(cx, cy, w, h) > 1 + _TOL:
            report.findings.append(Finding("coordinates outside 0..1", where, line[:80]))
        elif cx - w / 2 < -_TOL or cy - h / 2 < -_TOL or cx + w / 2 > 1 + _TOL or cy + h / 2 > 1 + _TOL:
            report.findings.append(Finding("box extends past the image", where, line[:80]))
        report.boxes += 1
        report.class_histogram[cls] = report.class_histogram.get(cls, 0) + 1
        sides.append(max(w * img_size[1], h * img_size[0]))


def check_dataset(image_dir: str | Path, classes: tuple[int, ...] = (), img_size: tuple[int, int] = (64, 64),
                  progress: Callable[[int, int], None] | None = None) -> CheckReport:
    root = require_image_dir(image_dir)
    report = CheckReport(str(root))
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    report.images = len(images)
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        results = []
        for done, result in enumerate(pool.map(_check_image, images), start=1):
            results.append(result)
            if progress is not None:
                progress(done, len(images))
    by_hash: dict[str, Path] = {}
    for path, (digest, notes, _) in zip(images, results, strict=True):
        for note in notes:
            kind, _, detail = note.partition(": ")
            report.findings.append(Finding(kind, str(path), detail))
        if digest is not None:
            if digest in by_hash:
                report.findings.append(Finding("duplicate image", str(path), f"same bytes as {by_hash[digest].name}"))
            else:
                by_hash[digest] = path
    sides: list[float] = []
    wanted = set(classes)
    for path in images:
        label = path.with_suffix(".txt")
        if not label.exists():
            report.findings.append(Finding("image without label file", str(path)))
            continue
        report.label_files += 1
        _check_labels(label, wanted, report, sides, img_size)
    side_arr = np.asarray(sides)
    bounds = (2, 4, 8, 16, 32, 64, 128, 10**9)
    lower = 0
    for b in bounds:
        name = f"{lower}-{b} px" if b < 10**9 else f">= {lower} px"
        report.size_histogram[name] = int(((side_arr >= lower) & (side_arr < b)).sum())
        lower = b
    for s in STRIDES:
        report.under_one_cell[s] = float((side_arr < s).mean()) if side_arr.size else 0.0
    return report


@dataclass
class FixSummary:
    out_dir: Path
    images_written: int = 0
    converted: list[str] = field(default_factory=list)  # images re-encoded as 8-bit 3-channel PNG
    dropped_images: list[dict] = field(default_factory=list)  # {"file", "reason"}
    dropped_lines: list[dict] = field(default_factory=list)  # {"file", "line", "text", "reason"}
    clipped_lines: list[dict] = field(default_factory=list)  # {"file", "line", "before", "after"}


def _fix_line(line: str) -> tuple[str | None, str]:
    """-> (the repaired line or None to drop, why: '' unchanged / 'clipped' / a drop reason)."""
    parsed = parse_line(line)
    if parsed is None:
        return None, "malformed line"
    cls, cx, cy, w, h = parsed
    if w <= 0 or h <= 0:
        return None, "w or h <= 0"
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
    if x2 - x1 <= _TOL or y2 - y1 <= _TOL:
        return None, "no area inside the image"
    if abs(x1 - (cx - w / 2)) < _TOL and abs(x2 - (cx + w / 2)) < _TOL and abs(y1 - (cy - h / 2)) < _TOL \
            and abs(y2 - (cy + h / 2)) < _TOL:
        return line, ""
    return f"{cls} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}", "clipped"


def fix_dataset(image_dir: str | Path, out_dir: str | Path) -> FixSummary:
    """Write a repaired copy of a YOLO folder into ``out_dir`` (which must not hold files yet).

    Unreadable and duplicate images are left out; images that are not 8-bit 3-channel (grayscale,
    16-bit, 4-channel) are re-encoded as 8-bit RGB PNG; label lines that are malformed, have w/h <= 0
    or no area in the image, and exact duplicates are dropped; boxes past the image are clipped.
    The originals are only read. Everything left out or changed is listed in the summary (and in
    ``fix_report.json`` by the CLI).
    """
    root = require_image_dir(image_dir)
    out = Path(out_dir)
    if out.resolve() == root.resolve():
        raise ConfigError("--fix must write to another folder than --image-dir")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--fix {out} is a file; give an empty or new folder")
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"--fix {out} already holds files; give an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    summary = FixSummary(out)
    seen_hashes: dict[str, str] = {}
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
        data = path.read_bytes()
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED) if data else None
        if image is None or image.size == 0:
            summary.dropped_images.append({"file": path.name, "reason": "unreadable image"})
            continue
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen_hashes:
            summary.dropped_images.append({"file": path.name, "reason": f"duplicate of {seen_hashes[digest]}"})
            continue
        seen_hashes[digest] = path.name
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            target = out / path.name
            target.write_bytes(data)
        else:
            target = out / (path.stem + ".png")
            cv2.imwrite(str(target), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
            summary.converted.append(f"{path.name} -> {target.name}")
        summary.images_written += 1
        label = path.with_suffix(".txt")
        if not label.exists():
            continue
        kept, seen_lines = [], set()
        for lineno, raw in enumerate(label.read_text(encoding="utf-8-sig", errors="replace").splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            fixed, why = _fix_line(line)
            if fixed is None:
                summary.dropped_lines.append({"file": label.name, "line": lineno, "text": line, "reason": why})
                continue
            if fixed in seen_lines:
                summary.dropped_lines.append({"file": label.name, "line": lineno, "text": line,
                                              "reason": "duplicate box"})
                continue
            if why == "clipped":
                summary.clipped_lines.append({"file": label.name, "line": lineno, "before": line, "after": fixed})
            seen_lines.add(fixed)
            kept.append(fixed)
        (out / (path.stem + ".txt")).write_text("".join(k + "\n" for k in kept))
    return summary
