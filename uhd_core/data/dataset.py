"""YOLO folder -> decoded, resized, cached uint8 arrays -> augmented batches.

Every image is decoded and resized exactly once (cached in memory and on disk), so epochs after the
first never touch a JPEG. Box format throughout: cxcywh normalized to 0..1.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from uhd_core.data.files import shown
from uhd_core.data.images import (
    DEFAULT_MAX_IMAGE_PIXELS,
    IMAGE_SUFFIXES,
    ImageDecodeError,
    decode_image,
    resize_image,
)
from uhd_core.anchors import box_sizes
from uhd_core.data.labels import LabelIssue, read_label_file, select_classes
from uhd_core.errors import DataError, first_line
from uhd_core.outputs import describe_os_error

CACHE_FORMAT = 1
ProgressFn = Callable[[int, int], None]


@dataclass
class YoloIndex:
    """The usable samples of a folder and what was skipped.

    ``boxes[i]`` (N_i, 4) float32 cxcywh normalized; ``labels[i]`` (N_i,) int64 in 0..K-1.
    """

    root: Path
    files: list[str]  # paths relative to root, sorted
    boxes: list[np.ndarray]
    labels: list[np.ndarray]
    issues: list[LabelIssue] = field(default_factory=list)
    num_scanned: int = 0
    num_without_targets: int = 0

    def __len__(self) -> int:
        return len(self.files)


def list_images(root: Path) -> list[Path]:
    """Every entry named like an image that is not a folder, sorted. FIFOs, devices and broken or
    outward symlinks are listed too, so that decoding refuses and *names* them (never opens them)."""
    return sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())


def require_image_dir(root: str | Path, flag: str = "--image-dir") -> Path:
    """The --image-dir (or ``flag``'s folder) as a Path, or DataError naming it and suggesting the synthetic demo set."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{flag} {shown(root)} does not exist or is not a folder "
                        f"(try `uhd dataset synth {shown(root)}`)")
    return root


def scan_yolo_folder(root: Path, classes: tuple[int, ...], follow_symlinks: bool = False,
                     flag: str = "--image-dir") -> YoloIndex:
    """Parse every label file; keep images with at least one target box (as the original does).

    Label files that are not regular files, or (without ``follow_symlinks``) lead outside ``root``,
    are not read: reported in ``issues``, their image counts as one without targets (``flag``: for errors).
    """
    root = require_image_dir(root, flag)
    images = list_images(root)
    if not images:
        raise DataError(f"{flag} {shown(root)} has no .jpg/.jpeg/.png/.bmp images (try `uhd dataset synth DIR`)")
    index = YoloIndex(root=root, files=[], boxes=[], labels=[], num_scanned=len(images))
    for path in images:
        parsed = read_label_file(path.with_suffix(".txt"), root=root, follow_symlinks=follow_symlinks)
        index.issues.extend(parsed.issues)
        boxes, labels = select_classes(parsed, classes)
        if len(boxes) == 0:
            index.num_without_targets += 1
            continue
        index.files.append(path.name)
        index.boxes.append(boxes)
        index.labels.append(labels)
    return index


def scan_extra_train_dirs(dirs: Sequence[str], image_dir: str | Path, classes: tuple[int, ...],
                          follow_symlinks: bool = False) -> list[YoloIndex]:
    """One index per --extra-train-dir, each guarded as --image-dir is. Missing, without a box of ``classes``,
    --image-dir itself (val images would leak into training) or given twice: one DataError line."""
    seen = {os.path.realpath(image_dir): "--image-dir"}
    indexes = []
    for folder in dirs:
        index = scan_yolo_folder(Path(folder), classes, follow_symlinks, flag="--extra-train-dir")
        real = os.path.realpath(folder)
        if real in seen:
            raise DataError(f"--extra-train-dir {shown(folder)} is the same folder as {seen[real]}: every image of an "
                            "extra folder is trained on, so it must be a different folder")
        seen[real] = f"--extra-train-dir {shown(folder)}"
        if len(index) == 0:
            raise DataError(f"--extra-train-dir {shown(folder)}: no image has a box of --classes "
                            f"{','.join(map(str, classes))}")
        indexes.append(index)
    return indexes


def drop_small_boxes(boxes: np.ndarray, labels: np.ndarray, min_px: float,
                     size_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The boxes ((N, 4) cxcywh normalized) whose *longer* side is >= ``min_px`` pixels of the (H, W) input.
    Longer, not shorter: people are thin; at 4 px the shorter-side rule drops 48-59% of the extra folders'
    boxes (a 3x10 px person is a fine target), the longer-side rule 25-30% (the dev set's: 1%)."""
    if min_px <= 0 or len(boxes) == 0:
        return boxes, labels
    h, w = size_hw
    keep = np.maximum(boxes[:, 2] * w, boxes[:, 3] * h) >= min_px
    return boxes[keep], labels[keep]


# ------------------------------------------------------------------------------------------------
# Decode-once cache

def default_cache_dir() -> Path:
    return Path(os.environ.get("UHD_CACHE_DIR") or Path.home() / ".cache" / "uhd")


def cache_key(root: Path, files: Sequence[str], size_hw: tuple[int, int], interpolation: str,
              max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, follow_symlinks: bool = False) -> str:
    """Changes whenever a file is added, removed, touched or resized, or the resize or the read rules
    (which images are refused) change. Names are hashed as the bytes the file system holds
    (``os.fsencode``): a Shift-JIS name is no UTF-8 ``str``."""
    digest = hashlib.sha256()
    digest.update(json.dumps([CACHE_FORMAT, os.fsencode(root.resolve()).hex(), list(size_hw), interpolation,
                              int(max_pixels), bool(follow_symlinks)]).encode())
    for name in files:
        try:
            st = os.stat(root / name)
            stamp = f"{st.st_mtime_ns}\0{st.st_size}\0{st.st_mode}"
        except OSError:  # a broken symlink: decoding names it; its key part is that it is missing
            stamp = "missing"
        digest.update(os.fsencode(name) + f"\0{stamp}\n".encode())
    return digest.hexdigest()[:32]


#: Memory the decode threads may hold at once: each holds up to one image at the pixel budget
#: (decoded BGR + its RGB copy, 6 bytes per pixel), so the pool is bounded by the budget, not by
#: the core count (32 cores x 2.7 GB for images just below a large --max-image-pixels).
DECODE_MEMORY_BUDGET = 2 << 30


def decode_workers(max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> int:
    """Threads for decoding: the cores, at most as many as DECODE_MEMORY_BUDGET holds images of ``max_pixels``."""
    return max(1, min(os.cpu_count() or 1, DECODE_MEMORY_BUDGET // max(1, 6 * int(max_pixels))))


@dataclass
class DecodedImages:
    """``images`` (N, H, W, 3) uint8 RGB; ``ok[i]`` False where decoding failed (``errors[i]`` says why,
    without the name). ``cache_warning``: one line when the optional cache could not be read or
    written (the images are fine; only the next run decodes again)."""

    images: np.ndarray
    ok: np.ndarray
    errors: list[str]
    from_cache: bool
    cache_warning: str = ""


def decode_all(root: Path, files: Sequence[str], size_hw: tuple[int, int], interpolation: str,
               cache_dir: Path | None, progress: ProgressFn | None = None, *,
               max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, follow_symlinks: bool = False) -> DecodedImages:
    """Decode and resize ``files`` (names relative to ``root``) once, through the image guard: a
    FIFO, a device, a symlink out of ``root`` (unless ``follow_symlinks``) or a header above
    ``max_pixels`` is a failed item (``ok`` False, ``errors`` says why), never a read."""
    h, w = size_hw
    cache_path = None
    if cache_dir is not None:
        key = cache_key(root, files, size_hw, interpolation, max_pixels, follow_symlinks)
        cache_path = Path(cache_dir) / f"images_{key}.npz"
        try:
            with np.load(cache_path, allow_pickle=False) as data:
                images, ok, errors = data["images"], data["ok"], [str(e) for e in data["errors"]]
            if images.shape == (len(files), h, w, 3):
                return DecodedImages(images, ok, errors, from_cache=True)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            pass  # missing, unreadable or damaged: rebuilt, never trusted
    images = np.zeros((len(files), h, w, 3), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    errors = [""] * len(files)

    def work(i: int) -> None:
        try:
            image = decode_image(root / files[i], root, follow_symlinks, max_pixels)
            images[i] = resize_image(image, size_hw, interpolation)
            ok[i] = True
        except ImageDecodeError as exc:
            errors[i] = str(exc)

    # cv2 releases the GIL while decoding, so threads use the cores without pickling arrays.
    with ThreadPoolExecutor(max_workers=decode_workers(max_pixels)) as pool:
        for done, _ in enumerate(pool.map(work, range(len(files))), start=1):
            if progress is not None:
                progress(done, len(files))
    warning = ""
    if cache_path is not None:
        try:
            _atomic_save_npz(cache_path, images=images, ok=ok, errors=np.array(errors, dtype=str))
        except OSError as exc:  # the cache is optional: a read-only or full disk only costs a re-decode
            warning = (f"{describe_os_error(exc, shown(cache_path.parent), 'cannot write the decode cache')} "
                       "(or set --cache-dir); continuing without it")
    return DecodedImages(images, ok, errors, from_cache=False, cache_warning=warning)


def _atomic_save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Raises OSError (the temp file removed) when the cache folder cannot be made or written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------------
# Split

def split_files(files: Sequence[str], train_split: float, val_split: float, seed: int) -> tuple[list[str], list[str]]:
    """Deterministic per seed and independent of the order `files` is given in."""
    ordered = sorted(files)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n_train = int(round(train_split * len(ordered)))
    n_val = int(round(val_split * len(ordered)))
    n_val = min(n_val, len(ordered) - n_train)
    train = [ordered[i] for i in perm[:n_train]]
    val = [ordered[i] for i in perm[n_train:n_train + n_val]]
    return sorted(train), sorted(val)


# ------------------------------------------------------------------------------------------------
# Torch side

#: ``augment(image, boxes, labels, rng, source=...)``, e.g. an AugmentPipeline (source: see random_sample)
AugmentFn = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


class CachedDetectionDataset(Dataset):
    """Items are ``(image (H, W, 3) uint8, boxes (N, 4) float32 cxcywh, labels (N,) int64)``.

    Indexed by ``(index, epoch)`` pairs (see EpochShuffleSampler) so augmentation randomness is a
    pure function of (seed, epoch, index): identical across worker counts and after resume.

    With ``student_size`` set (distillation from a teacher with a larger input), ``images`` hold the
    teacher's size; each sample is augmented once at that size and items gain a fourth entry: the
    same augmented image for the teacher, while the first entry is it resized to ``student_size``
    (with ``interpolation``). Normalized boxes fit both renditions unchanged.
    """

    def __init__(self, images: np.ndarray, boxes: list[np.ndarray], labels: list[np.ndarray],
                 augment: AugmentFn | None = None, seed: int = 0, student_size: tuple[int, int] | None = None,
                 interpolation: str = "area", names: list[str] | None = None) -> None:
        self.images = images
        self.boxes = boxes
        self.labels = labels
        self.augment = augment
        self.seed = seed
        self.student_size = student_size
        self.interpolation = interpolation
        self.names = names  # source file of each item, for error messages

    def __len__(self) -> int:
        return len(self.images)

    def random_sample(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A random un-augmented item (image, boxes cxcywh, labels): the partners of Mosaic, MixUp, CopyPaste."""
        j = int(rng.integers(len(self.images)))
        return self.images[j], self.boxes[j], self.labels[j]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[np.ndarray, ...]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        image, boxes, labels = self.images[index], self.boxes[index], self.labels[index]
        if self.augment is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            try:
                image, boxes, labels = self.augment(image, boxes, labels, rng, source=self.random_sample)
            except Exception as exc:  # noqa: BLE001 - name the image, whatever the op raised
                name = shown(self.names[index]) if self.names else f"item {index}"
                raise DataError(f"{name} (epoch {epoch}): augmentation failed: "
                                f"{type(exc).__name__}: {first_line(exc)}") from exc
        if self.student_size is not None:
            return resize_image(image, self.student_size, self.interpolation), boxes, labels, image
        return image, boxes, labels


class EpochShuffleSampler(Sampler):
    """Yields ``(index, epoch)``; the order is a permutation seeded by (seed, epoch)."""

    def __init__(self, num_items: int, seed: int, shuffle: bool = True) -> None:
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.num_items, generator=gen).tolist()
        else:
            order = range(self.num_items)
        return iter((i, self.epoch) for i in order)


@dataclass
class Batch:
    """``images`` (B, 3, H, W) uint8 RGB; ``boxes`` (B, M, 4) float32 cxcywh normalized;
    ``labels`` (B, M) int64 with -1 marking padding (M >= 1); ``teacher_images`` (B, 3, Ht, Wt)
    uint8, the same augmented samples at a distillation teacher's input size (None otherwise)."""

    images: torch.Tensor
    boxes: torch.Tensor
    labels: torch.Tensor
    teacher_images: torch.Tensor | None = None

    def pin_memory(self) -> Batch:
        teacher = self.teacher_images.pin_memory() if self.teacher_images is not None else None
        return Batch(self.images.pin_memory(), self.boxes.pin_memory(), self.labels.pin_memory(), teacher)

    @property
    def valid(self) -> torch.Tensor:
        return self.labels >= 0


def _stack_images(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def collate_detection(items: Sequence[tuple[np.ndarray, ...]]) -> Batch:
    """Items of CachedDetectionDataset -> Batch (boxes padded to the batch's largest count)."""
    max_boxes = max(1, max(len(it[1]) for it in items))
    boxes = np.zeros((len(items), max_boxes, 4), dtype=np.float32)
    labels = np.full((len(items), max_boxes), -1, dtype=np.int64)
    for i, (_, b, lab, *_rest) in enumerate(items):
        boxes[i, : len(b)] = b
        labels[i, : len(lab)] = lab
    teacher = _stack_images([it[3] for it in items]) if len(items[0]) > 3 else None
    return Batch(_stack_images([it[0] for it in items]), torch.from_numpy(boxes), torch.from_numpy(labels), teacher)


def images_to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 0..1 on `device`, channels-last strides.

    Converting after the copy moves 4x fewer bytes. Channels-last (NHWC) memory is what oneDNN's
    depthwise convolutions want: it halves the training step of the tiny CNN on a CPU (bench/).
    """
    x = images.to(device, non_blocking=True).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last)


def load_box_sizes(image_dir: Path, classes: tuple[int, ...] = (0,), *, train_split_only: bool = False,
                   train_split: float = 0.8, val_split: float = 0.2, seed: int = 42) -> np.ndarray:
    """Normalized (w, h) of every box of ``classes`` in a YOLO folder: (N, 2) float64.

    With ``train_split_only`` only the training images of the split `uhd train` would make with the
    same ``train_split``/``val_split``/``seed`` are used. Raises DataError for a missing folder or
    when no box of ``classes`` is found.
    """
    index = scan_yolo_folder(Path(image_dir), tuple(classes))
    boxes = index.boxes
    if train_split_only and index.files:
        train, _ = split_files(index.files, train_split, val_split, seed)
        keep = set(train)
        boxes = [b for f, b in zip(index.files, index.boxes) if f in keep]
    wh = box_sizes(boxes)
    if len(wh) == 0:
        which = "training split of " if train_split_only else ""
        cls = ",".join(map(str, classes))
        raise DataError(f"no boxes of --classes {cls} in the {which}{index.num_scanned} images of {index.root}")
    return wh
