"""`uhd dataset-check`: everything wrong (or worth knowing) about a YOLO folder, before training on it.

Reads every label line itself (training's parser skips bad lines; this one names them) and decodes
every image once with OpenCV (threads; cv2 releases the GIL) to find unreadable, truncated,
grayscale / 16-bit / 4-channel files and duplicate contents. Files are read through the same guard
as training (``uhd_core.data.files``, ``images.read_image_bytes``): what training would not read
(FIFOs, devices, symlinks out of the folder, images above the pixel budget) is reported
"unreadable" with the reason, and never opened or decoded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from uhd_core.data.dataset import decode_workers, list_images, require_image_dir
from uhd_core.data.files import FileRefused, read_dataset_file, shown
from uhd_core.data.images import DEFAULT_MAX_IMAGE_PIXELS, ImageDecodeError, read_image_bytes
from uhd_core.errors import OutputError, bounded
from uhd_core.limits import MAX_CLASS_ID
from uhd_core.outputs import check_output_dir, describe_os_error, fsync_dir

#: A box smaller than one output cell at these strides (in input pixels) is hard to see for the model.
STRIDES = (4, 8, 16)
EXTREME_ASPECT = 4.0
_TOL = 1e-6
#: Characters of a label line a report quotes (a line can be a megabyte; a symlinked file's content
#: is nobody's business).
LINE_QUOTE = 80


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


def _check_image(path: Path, root: Path, follow_symlinks: bool = False,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[str | None, list[str], tuple[int, int] | None]:
    """(sha1 of the bytes or None, notes, (h, w))."""
    try:
        data = read_image_bytes(path, root, follow_symlinks, max_pixels)
    except ImageDecodeError as exc:
        return None, [f"unreadable image: {exc}"], None
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
                  img_size: tuple[int, int], root: Path, follow_symlinks: bool = False) -> None:
    try:
        text = read_dataset_file(path, root, follow_symlinks).decode("utf-8-sig")
    except (FileRefused, UnicodeDecodeError) as exc:
        report.findings.append(Finding("unreadable label file", shown(path), bounded(exc)))
        return
    lines = [(i, raw.strip()) for i, raw in enumerate(text.splitlines(), start=1)]
    if not any(line for _, line in lines):
        report.findings.append(Finding("empty label file", shown(path)))
        return
    seen: set[tuple[str, ...]] = set()
    for lineno, line in lines:
        if not line:
            continue
        where = f"{shown(path)}:{lineno}"
        fields = line.split()
        parsed = parse_line(line)
        if parsed is None:
            report.findings.append(Finding("malformed line", where, bounded(line, LINE_QUOTE)))
            continue
        cls, cx, cy, w, h = parsed
        if tuple(fields) in seen:
            report.findings.append(Finding("duplicate box", where, bounded(line, LINE_QUOTE)))
        seen.add(tuple(fields))
        if classes and cls not in classes:
            report.findings.append(Finding("class not in --classes", where, f"class {cls}"))
        if w <= 0 or h <= 0:
            report.findings.append(Finding("w or h <= 0", where, bounded(line, LINE_QUOTE)))
            continue
        if min(cx, cy, w, h) < -_TOL or max(cx, cy, w, h) > 1 + _TOL:
            report.findings.append(Finding("coordinates outside 0..1", where, bounded(line, LINE_QUOTE)))
        elif cx - w / 2 < -_TOL or cy - h / 2 < -_TOL or cx + w / 2 > 1 + _TOL or cy + h / 2 > 1 + _TOL:
            report.findings.append(Finding("box extends past the image", where, bounded(line, LINE_QUOTE)))
        report.boxes += 1
        report.class_histogram[cls] = report.class_histogram.get(cls, 0) + 1
        sides.append(max(w * img_size[1], h * img_size[0]))


def check_dataset(image_dir: str | Path, classes: tuple[int, ...] = (), img_size: tuple[int, int] = (64, 64),
                  progress: Callable[[int, int], None] | None = None, *, follow_symlinks: bool = False,
                  max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> CheckReport:
    """``follow_symlinks``: read files whose real path leaves the folder; ``max_pixels``: images whose
    header declares more are reported unreadable and not decoded (as training skips them)."""
    root = require_image_dir(image_dir)
    report = CheckReport(shown(root))
    images = list_images(root)
    report.images = len(images)

    def check(path: Path) -> tuple[str | None, list[str], tuple[int, int] | None]:
        return _check_image(path, root, follow_symlinks, max_pixels)

    with ThreadPoolExecutor(max_workers=decode_workers(max_pixels)) as pool:
        results = []
        for done, result in enumerate(pool.map(check, images), start=1):
            results.append(result)
            if progress is not None:
                progress(done, len(images))
    by_hash: dict[str, Path] = {}
    for path, (digest, notes, _) in zip(images, results, strict=True):
        for note in notes:
            kind, _, detail = note.partition(": ")
            report.findings.append(Finding(kind, shown(path), detail))
        if digest is not None:
            if digest in by_hash:
                report.findings.append(Finding("duplicate image", shown(path),
                                               f"same bytes as {shown(by_hash[digest].name)}"))
            else:
                by_hash[digest] = path
    sides: list[float] = []
    wanted = set(classes)
    for path in images:
        label = path.with_suffix(".txt")
        if not os.path.lexists(label):
            report.findings.append(Finding("image without label file", shown(path)))
            continue
        report.label_files += 1
        _check_labels(label, wanted, report, sides, img_size, root, follow_symlinks)
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


#: The report --fix writes into the repaired folder; its presence marks a complete --fix result.
FIX_REPORT = "fix_report.json"
_FIX_TEMP_TAG = ".uhd-fix-"


def _fix_temp_dir(out: Path, what: str = "new") -> Path:
    """A hidden sibling of ``out`` (same file system, so the final rename is atomic), tagged with the
    pid so that a leftover of a killed run is recognised as such and never taken for a result."""
    return out.parent / f".{out.name}{_FIX_TEMP_TAG}{what}-{os.getpid()}.tmp"


def _remove_stale_temp_dirs(out: Path) -> None:
    """Temp folders of earlier --fix runs into ``out`` whose process is gone (killed mid-way)."""
    for candidate in out.parent.glob(f".{glob_escape(out.name)}{_FIX_TEMP_TAG}*.tmp"):
        try:
            pid = int(candidate.name.rsplit("-", 1)[1].removesuffix(".tmp"))
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except ProcessLookupError:
            alive = False
        except (ValueError, IndexError, PermissionError, OSError):
            alive = True  # not ours to judge: leave it
        if not alive and candidate.is_dir():
            shutil.rmtree(candidate, ignore_errors=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def check_fix_target(out_dir: str | Path, image_dir: str | Path, overwrite: bool = False) -> Path:
    """The output rule for ``--fix OUT`` (``uhd_core.outputs``), before any work: OUT is not the checked
    folder, inside it or around it (not even with ``overwrite``); an existing OUT that holds files is
    replaced only with ``overwrite`` and only if it is an earlier --fix result (it holds
    ``fix_report.json``): --fix never deletes a folder of other files. The copy is built next to OUT,
    so OUT's parent must be writable."""
    out = check_output_dir(Path(out_dir), flag="--fix", overwrite=overwrite, input_dirs=[image_dir])
    if out.is_dir() and any(out.iterdir()):
        if not (out / FIX_REPORT).is_file():
            raise OutputError(f"--fix {shown(out)} holds files that are not an earlier --fix result (no {FIX_REPORT});"
                              " choose an empty or new folder")
    if out.exists() and not os.access(out.parent, os.W_OK | os.X_OK):
        raise OutputError(f"--fix {shown(out)}: cannot write in {shown(out.parent)}, where the repaired copy is built "
                          "before it is renamed into place; choose a new folder in a folder you can write to")
    return out


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def fix_dataset(image_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
                follow_symlinks: bool = False, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> FixSummary:
    """Write a repaired copy of a YOLO folder into ``out_dir``, with ``fix_report.json`` in it.

    Unreadable and duplicate images are left out (so are those training would not read: FIFOs,
    symlinks out of the folder, images above ``max_pixels``, and images whose label file is such a
    file); images that are not 8-bit 3-channel (grayscale, 16-bit, 4-channel) are re-encoded as 8-bit
    RGB PNG; label lines that are malformed, have w/h <= 0 or no area in the image, and exact
    duplicates are dropped; boxes past the image are clipped. The originals are only read.

    All or nothing: the copy (report included) is built in a hidden temp folder next to ``out_dir``
    and renamed into place when complete, so a kill leaves no ``out_dir`` that looks like a result.
    ``out_dir`` must be empty or new, or (``overwrite``) an earlier --fix result, which is replaced.
    An OS failure (read-only target, full disk) is one OutputError naming the path.
    """
    root = require_image_dir(image_dir)
    out = check_fix_target(out_dir, root, overwrite)
    summary = FixSummary(out)
    _remove_stale_temp_dirs(out)
    tmp = _fix_temp_dir(out)
    try:
        tmp.mkdir(parents=True)
        _build_fixed_copy(root, tmp, summary, follow_symlinks, max_pixels)
        report = json.dumps(dataclasses.asdict(summary), indent=1, default=str)
        _write_synced(tmp / FIX_REPORT, report.encode("utf-8"))  # last: a folder without it is no result
        fsync_dir(tmp)
        if out.exists():  # an empty folder, or (--overwrite) an earlier result: swap, then remove the old one
            old = _fix_temp_dir(out, "old")
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
        fsync_dir(out.parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        where = exc.filename if isinstance(exc.filename, str) else out
        raise OutputError(f"--fix: {describe_os_error(exc, shown(where))}; nothing was written to "
                          f"{shown(out)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _build_fixed_copy(root: Path, out: Path, summary: FixSummary, follow_symlinks: bool, max_pixels: int) -> None:
    seen_hashes: dict[str, str] = {}
    for path in list_images(root):
        try:
            data = read_image_bytes(path, root, follow_symlinks, max_pixels)
        except ImageDecodeError as exc:
            summary.dropped_images.append({"file": path.name, "reason": f"unreadable image: {exc}"})
            continue
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            summary.dropped_images.append({"file": path.name, "reason": "unreadable image"})
            continue
        digest = hashlib.sha1(data).hexdigest()
        if digest in seen_hashes:
            summary.dropped_images.append({"file": path.name, "reason": f"duplicate of {seen_hashes[digest]}"})
            continue
        label = path.with_suffix(".txt")
        text = None
        if os.path.lexists(label):
            try:
                text = read_dataset_file(label, root, follow_symlinks).decode("utf-8-sig", errors="replace")
            except FileRefused as exc:  # its boxes are unknown: the image would turn into a negative
                summary.dropped_images.append({"file": path.name, "reason": f"label file not read: {exc}"})
                continue
        seen_hashes[digest] = path.name
        if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
            _write_synced(out / path.name, data)
        else:
            target = out / (path.stem + ".png")
            # imencode + our own write: cv2.imwrite crashes on names that are not UTF-8.
            ok, encoded = cv2.imencode(".png", cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))
            if not ok:
                summary.dropped_images.append({"file": path.name, "reason": "could not be re-encoded as PNG"})
                continue
            _write_synced(target, encoded.tobytes())
            summary.converted.append(f"{path.name} -> {target.name}")
        summary.images_written += 1
        if text is None:
            continue
        kept, seen_lines = [], set()
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            quoted = bounded(line, LINE_QUOTE)
            fixed, why = _fix_line(line)
            if fixed is None:
                summary.dropped_lines.append({"file": label.name, "line": lineno, "text": quoted, "reason": why})
                continue
            if fixed in seen_lines:
                summary.dropped_lines.append({"file": label.name, "line": lineno, "text": quoted,
                                              "reason": "duplicate box"})
                continue
            if why == "clipped":
                summary.clipped_lines.append({"file": label.name, "line": lineno, "before": quoted, "after": fixed})
            seen_lines.add(fixed)
            kept.append(fixed)
        _write_synced(out / (path.stem + ".txt"), "".join(k + "\n" for k in kept).encode("utf-8"))
