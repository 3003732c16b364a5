"""`uhd predict`: run a model on an image, a folder of images or a video; write what it found.

Detections are filtered at ``conf_thresh`` and cut to the image; boxes are cxcywh normalized to the original image (the
model input is a stretch-resize of it, so normalized boxes carry over unchanged). Class ids in every
output are the *source* class ids of the training labels (``cfg.classes``), so ``--save-txt`` files are
YOLO labels in the same id space as the data the model was trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from uhd_core.data.images import IMAGE_SUFFIXES, ImageDecodeError, decode_image, resize_image
from uhd_core.errors import DataError, OutputError
from uhd_core.inference import load_predictor
from uhd_core.outputs import (
    check_output_dir,
    check_output_file,
    describe_os_error,
    move_output,
    native_path_ok,
    opencv_path,
    write_image,
    write_output,
)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_COLOUR = (0, 0, 255)  # BGR


@dataclass
class PredictSummary:
    out_dir: Path
    images: int = 0
    detections: int = 0
    skipped: list[str] = field(default_factory=list)  # unreadable files, "path: reason"
    json_path: Path | None = None


def _frames(source: Path) -> Iterator[tuple[str, np.ndarray | None, str]]:
    """(name relative to the source, RGB image or None, error) for an image, a folder or a video."""
    if source.is_dir():
        for path in sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                yield path.relative_to(source).as_posix(), decode_image(path), ""
            except ImageDecodeError as exc:
                yield path.relative_to(source).as_posix(), None, str(exc)
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        with opencv_path(source) as cv_source:
            cap = cv2.VideoCapture(cv_source)
            n = 0
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                yield f"{source.name}#{n:06d}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), ""
                n += 1
            cap.release()
    else:
        try:
            yield source.name, decode_image(source), ""
        except ImageDecodeError as exc:
            yield source.name, None, str(exc)


def count_frames(source: Path) -> int | None:
    """Items predict will visit (for a progress bar); None when unknown."""
    if source.is_dir():
        return sum(1 for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if source.suffix.lower() in VIDEO_SUFFIXES:
        with opencv_path(source) as cv_source:
            cap = cv2.VideoCapture(cv_source)
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            cap.release()
        return n if n > 0 else None
    return 1


def clip_to_image(dets: np.ndarray) -> np.ndarray:
    """(K, 6) detections with boxes cut to the image (0..1); boxes left without area are dropped."""
    x1 = np.clip(dets[:, 2] - dets[:, 4] / 2, 0, 1)
    y1 = np.clip(dets[:, 3] - dets[:, 5] / 2, 0, 1)
    x2 = np.clip(dets[:, 2] + dets[:, 4] / 2, 0, 1)
    y2 = np.clip(dets[:, 3] + dets[:, 5] / 2, 0, 1)
    out = dets.copy()
    out[:, 2], out[:, 3], out[:, 4], out[:, 5] = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    return out[(out[:, 4] > 0) & (out[:, 5] > 0)]


def draw(image_rgb: np.ndarray, dets: np.ndarray, class_ids: list[int]) -> np.ndarray:
    """Boxes and scores on a BGR copy of the original-size image."""
    h, w = image_rgb.shape[:2]
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    thickness = max(1, round(min(h, w) / 200))
    for (score, _, cx, cy, bw, bh), cid in zip(dets, class_ids, strict=True):
        x1, y1 = int((cx - bw / 2) * w), int((cy - bh / 2) * h)
        x2, y2 = int((cx + bw / 2) * w), int((cy + bh / 2) * h)
        cv2.rectangle(out, (x1, y1), (x2, y2), _COLOUR, thickness)
        cv2.putText(out, f"{cid} {score:.2f}", (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thickness, _COLOUR, thickness)
    return out


class _VideoOut:
    """The annotated video: ``cv2.VideoWriter`` needs a path, so it writes to an ASCII temp name
    (in the out folder when OpenCV can take that folder's path, else in the system temp folder) that
    becomes ``final`` only in ``close()``: a kill leaves no half video under the final name."""

    def __init__(self, final: Path, fps: float, size_wh: tuple[int, int]) -> None:
        self.final = final
        folder = final.parent if native_path_ok(final.parent.resolve()) else Path(tempfile.gettempdir())
        self.tmp = folder / f".uhd_video_{os.getpid()}.tmp.mp4"
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size_wh)
        if not self.writer.isOpened():
            self.tmp.unlink(missing_ok=True)
            raise DataError(f"--out {final.parent}: OpenCV cannot write an mp4 video here (no mp4v encoder?)")

    def write(self, frame_bgr: np.ndarray) -> None:
        self.writer.write(frame_bgr)

    def close(self) -> None:
        self.writer.release()
        if self.tmp.parent == self.final.parent:
            move_output(self.tmp, self.final, "--out")
            return
        try:  # another file system: copy next to the final name, then rename there
            staged = self.final.with_name(f".{self.final.name}.{os.getpid()}.tmp")
            shutil.copyfile(self.tmp, staged)
        except OSError as exc:
            raise OutputError(f"--out: {describe_os_error(exc, self.final)}") from None
        finally:
            self.tmp.unlink(missing_ok=True)
        move_output(staged, self.final, "--out")

    def discard(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)


def predict(model_path: str | Path, source: str | Path, out_dir: str | Path, *, conf_thresh: float = 0.3,
            json_path: str | Path | None = None, save_txt: bool = False, overwrite: bool = False,
            progress: Callable[[int], None] | None = None) -> PredictSummary:
    """Detect on ``source`` (an image, a folder of images, or a video) and write under ``out_dir``.

    Every output is checked before the model is even loaded (docs/RELIABILITY.md): ``out_dir`` and
    ``json_path`` may not be, contain or lie inside the model or the source, an ``out_dir`` that
    holds files and an existing ``json_path`` need ``overwrite``, and both must be writable.
    """
    source, out_dir = Path(source), Path(out_dir)
    if not source.exists():
        raise DataError(f"--source {source} does not exist")
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {out_dir} is a file; give a folder")
    inputs = [Path(model_path), source]
    check_output_dir(out_dir, flag="--out", overwrite=overwrite, inputs=inputs)
    if json_path is not None:
        check_output_file(Path(json_path), flag="--json", overwrite=overwrite, inputs=inputs)
    is_video = source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES
    fps = _video_fps(source) if is_video else 25.0
    predictor = load_predictor(model_path)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out: {describe_os_error(exc, out_dir, 'cannot create')}") from None
    summary = PredictSummary(out_dir)
    records = []
    video: _VideoOut | None = None
    try:
        for name, image, error in _frames(source):
            if image is None:
                summary.skipped.append(f"{name}: {error}")
                continue
            dets, class_ids, record = _detect(predictor, image, name, conf_thresh)
            records.append(record)
            annotated = draw(image, dets, class_ids)
            if is_video:
                if video is None:
                    video = _VideoOut(out_dir / (source.stem + "_pred.mp4"), fps, (record["width"], record["height"]))
                video.write(annotated)
            else:
                write_image(out_dir / name, annotated, "--out")
            if save_txt:
                txt = out_dir / "labels" / (name.replace("#", "_") if is_video else name)
                write_output(txt.with_suffix(".txt"), "".join(f"{cid} {d[2]:.6f} {d[3]:.6f} {d[4]:.6f} {d[5]:.6f}\n"
                                                               for d, cid in zip(dets, class_ids, strict=True)),
                             "--save-txt")
            summary.images += 1
            summary.detections += len(dets)
            if progress is not None:
                progress(summary.images)
    except BaseException:
        if video is not None:
            video.discard()
        raise
    if video is not None:
        video.close()
    _finish(summary, source, model_path, json_path, records)
    return summary


def _video_fps(source: Path) -> float:
    """The frame rate of the video ``source`` (25 when it does not say); DataError when OpenCV cannot
    read a frame of it: such a video would otherwise yield no frames, a silent "0 images" success."""
    with opencv_path(source) as cv_source:
        cap = cv2.VideoCapture(cv_source)
        opened = cap.isOpened() and cap.read()[0]
        fps = (cap.get(cv2.CAP_PROP_FPS) or 25.0) if opened else 25.0
        cap.release()
    if not opened:
        raise DataError(f"--source {source}: cannot be opened as a video (damaged, or a codec OpenCV lacks)")
    return fps


def _detect(predictor, image: np.ndarray, name: str, conf_thresh: float) -> tuple[np.ndarray, list[int], dict]:
    """Run ``predictor`` on one RGB ``image``: (its (K, 6) detections at ``conf_thresh`` cut to the
    image, their source class ids, its record for the ``--json`` file)."""
    cfg = predictor.cfg
    small = resize_image(image, predictor.img_size, predictor.resize_interpolation)
    dets = predictor.predict(small[None], cfg.topk)[0]
    dets = clip_to_image(dets[dets[:, 0] >= conf_thresh])
    class_ids = [int(cfg.classes[int(c)]) for c in dets[:, 1]]
    h, w = image.shape[:2]
    record = {"file": name, "width": w, "height": h, "detections": [
        {"score": round(float(d[0]), 5), "class_id": cid, "box_cxcywh": [round(float(v), 6) for v in d[2:6]]}
        for d, cid in zip(dets, class_ids, strict=True)]}
    return dets, class_ids, record


def _finish(summary: PredictSummary, source: Path, model_path: str | Path, json_path: str | Path | None,
            records: list[dict]) -> None:
    """Refuse a run that predicted on no image; write the ``--json`` file."""
    if summary.images == 0:  # nothing to show for the run: an error, not "0 images" and exit 0
        why = f"no readable image ({summary.skipped[0]})" if summary.skipped else \
            f"holds no {'/'.join(IMAGE_SUFFIXES)} images"
        raise DataError(f"--source {source}: {why}")
    if json_path is not None:
        summary.json_path = Path(json_path)
        write_output(summary.json_path, json.dumps({"model": str(model_path), "images": records}, indent=1), "--json")
