"""YOLO folder scan, image decoding of awkward formats, the decode-once cache, split and collate."""

from __future__ import annotations

import os
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from uhd_core.data.dataset import collate_detection, decode_all, scan_yolo_folder, split_files
from uhd_core.data.images import decode_image
from uhd_core.errors import DataError

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def _solid(path: Path, colour=GREEN, size=(24, 32)) -> Path:
    """A solid-colour RGB image of (H, W) = size, saved by PIL in the format of the suffix."""
    h, w = size
    Image.new("RGB", (w, h), colour).save(path, quality=95)
    return path


# ------------------------------------------------------------------------------------------------
# scan

def test_scan_counts_and_skips_images_without_target_boxes(tmp_path):
    for name in ("a", "b", "c", "d", "e"):
        _solid(tmp_path / f"{name}.jpg")
    (tmp_path / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.3 0.3 0.1 0.1\n")
    (tmp_path / "b.txt").write_text("1 0.5 0.5 0.2 0.2\n")  # only a class we do not train on
    (tmp_path / "d.txt").write_text("")  # explicit negative image
    # c.jpg has no label file at all (also a negative image)
    (tmp_path / "e.txt").write_text("0 0.5 0.5 0.2\n2 0.4 0.4 0.2 0.2\n")  # bad line + other class
    (tmp_path / "notes.md").write_text("not an image")
    index = scan_yolo_folder(tmp_path, (0,))
    assert index.num_scanned == 5
    assert index.files == ["a.jpg"]
    assert index.num_without_targets == 4
    assert len(index) == 1 and index.boxes[0].shape == (2, 4) and index.labels[0].tolist() == [0, 0]
    assert [(Path(i.path).name, i.line) for i in index.issues] == [("e.txt", 1)]

    # the same folder with classes (2, 1): b and e have targets now, mapped 2 -> 0, 1 -> 1
    index = scan_yolo_folder(tmp_path, (2, 1))
    assert index.files == ["b.jpg", "e.jpg"]
    assert [lab.tolist() for lab in index.labels] == [[1], [0]]
    assert index.num_without_targets == 3


def test_scan_missing_or_empty_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_yolo_folder(tmp_path / "missing", (0,))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .jpg"):
        scan_yolo_folder(tmp_path / "empty", (0,))


def test_scan_of_the_synthetic_folder_matches_its_label_files(tiny_yolo_dir):
    index = scan_yolo_folder(tiny_yolo_dir, (0,))
    non_empty = sorted(p.with_suffix(".jpg").name for p in tiny_yolo_dir.glob("*.txt") if p.read_text().strip())
    assert index.files == non_empty
    assert index.num_scanned == len(list(tiny_yolo_dir.glob("*.jpg")))
    assert index.num_without_targets == index.num_scanned - len(non_empty)
    assert index.issues == []


# ------------------------------------------------------------------------------------------------
# decoding awkward files

def test_corrupt_and_empty_files_are_reported_not_raised(tmp_path):
    _solid(tmp_path / "good.jpg", RED)
    (tmp_path / "garbage.jpg").write_bytes(os.urandom(64) + b"definitely not a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    files = ["empty.png", "garbage.jpg", "good.jpg"]
    out = decode_all(tmp_path, files, (16, 16), "area", cache_dir=None)
    assert out.ok.tolist() == [False, False, True]
    assert "empty" in out.errors[0]
    assert "decodable" in out.errors[1]
    assert out.errors[2] == ""
    assert out.images.shape == (3, 16, 16, 3) and out.images.dtype == np.uint8
    assert np.all(out.images[:2] == 0)
    assert np.all(np.abs(out.images[2].astype(int) - RED) <= 3)


def test_grayscale_png_decodes_to_three_equal_channels(tmp_path):
    Image.new("L", (20, 10), 77).save(tmp_path / "g.png")
    img = decode_image(tmp_path / "g.png")
    assert img.shape == (10, 20, 3) and img.dtype == np.uint8
    assert np.all(img == 77)


def test_16bit_png_decodes_to_8bit_rgb(tmp_path):
    Image.fromarray(np.full((10, 20), 0x8000, dtype=np.uint16)).save(tmp_path / "g16.png")  # PIL mode I;16
    img = decode_image(tmp_path / "g16.png")
    assert img.shape == (10, 20, 3) and img.dtype == np.uint8
    assert np.all(img == 128)
    # PIL cannot write 16-bit colour; OpenCV writes BGR channel order
    bgr16 = np.zeros((10, 20, 3), dtype=np.uint16)
    bgr16[..., 2] = 0xFFFF  # red
    bgr16[..., 1] = 0x4000  # a quarter green
    cv2.imwrite(str(tmp_path / "c16.png"), bgr16)
    img = decode_image(tmp_path / "c16.png")
    assert img.shape == (10, 20, 3) and img.dtype == np.uint8
    assert img[5, 5].tolist() == [255, 64, 0]


def test_rgba_and_palette_pngs_decode_to_rgb(tmp_path):
    Image.new("RGBA", (8, 6), (10, 200, 30, 128)).save(tmp_path / "a.png")
    Image.new("RGB", (8, 6), (200, 10, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert decode_image(tmp_path / "a.png")[0, 0].tolist() == [10, 200, 30]
    assert decode_image(tmp_path / "p.png")[0, 0].tolist() == [200, 10, 30]


def test_cmyk_jpeg_decodes_to_rgb(tmp_path):
    Image.new("CMYK", (16, 12), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure red
    img = decode_image(tmp_path / "cmyk.jpg")
    assert img.shape == (12, 16, 3) and img.dtype == np.uint8
    assert np.all(np.abs(img[6, 8].astype(int) - RED) <= 3)


def test_exif_rotated_jpeg_is_decoded_upright(tmp_path):
    # Stored 40 wide x 20 high: left half red, right half blue. EXIF orientation 6 means "rotate
    # 90 degrees clockwise to display": upright it is 20 wide x 40 high, red on top, blue below.
    stored = np.zeros((20, 40, 3), dtype=np.uint8)
    stored[:, :20] = RED
    stored[:, 20:] = BLUE
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    img = decode_image(path)
    assert img.shape == (40, 20, 3)
    assert np.all(np.abs(img[5, 10].astype(int) - RED) <= 6)
    assert np.all(np.abs(img[34, 10].astype(int) - BLUE) <= 6)
    reference = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.abs(img.astype(int) - reference).max() <= 6


def test_decode_all_resizes_every_format_to_the_training_size(tmp_path):
    _solid(tmp_path / "a.jpg", RED, (50, 70))
    Image.new("L", (33, 17), 200).save(tmp_path / "b.png")
    _solid(tmp_path / "c.bmp", BLUE, (64, 64))
    out = decode_all(tmp_path, ["a.jpg", "b.png", "c.bmp"], (32, 48), "area", cache_dir=None)
    assert out.ok.all()
    assert out.images.shape == (3, 32, 48, 3)
    assert np.all(np.abs(out.images[0].astype(int) - RED) <= 3)
    assert np.all(out.images[1] == 200)
    assert np.all(out.images[2] == BLUE)


# ------------------------------------------------------------------------------------------------
# decode cache

def _cache_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("images_*.npz"))


def test_decode_cache_hit_and_invalidation(tmp_path, uhd_cache_dir):
    root = tmp_path / "imgs"
    root.mkdir()
    colours = [RED, GREEN, BLUE]
    files = []
    for i, colour in enumerate(colours):
        _solid(root / f"{i}.png", colour, (20, 30))
        files.append(f"{i}.png")
    cache = uhd_cache_dir

    first = decode_all(root, files, (16, 16), "area", cache)
    assert not first.from_cache
    assert len(_cache_files(cache)) == 1
    second = decode_all(root, files, (16, 16), "area", cache)
    assert second.from_cache
    np.testing.assert_array_equal(second.images, first.images)
    assert second.ok.tolist() == first.ok.tolist() and second.errors == first.errors

    # a different training size is a different cache entry
    other_size = decode_all(root, files, (16, 24), "area", cache)
    assert not other_size.from_cache and other_size.images.shape == (3, 16, 24, 3)
    # so is a different interpolation
    assert not decode_all(root, files, (16, 16), "nearest", cache).from_cache

    # a file rewritten in place (new mtime) must be decoded again, with its new content
    Image.new("RGB", (30, 20), (9, 9, 9)).save(root / "1.png")
    st = (root / "1.png").stat()
    os.utime(root / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    after_edit = decode_all(root, files, (16, 16), "area", cache)
    assert not after_edit.from_cache
    assert np.all(after_edit.images[1] == 9)
    assert decode_all(root, files, (16, 16), "area", cache).from_cache

    # touching alone (same bytes) also invalidates: the key trusts mtime, not content
    st = (root / "0.png").stat()
    os.utime(root / "0.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not decode_all(root, files, (16, 16), "area", cache).from_cache

    # a different file list (one image removed from the split) is a different entry
    assert not decode_all(root, files[:2], (16, 16), "area", cache).from_cache


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_cache_file_is_rebuilt_not_trusted(tmp_path, uhd_cache_dir, damage):
    _solid(tmp_path / "a.png", RED)
    first = decode_all(tmp_path, ["a.png"], (8, 8), "area", uhd_cache_dir)
    (cache_file,) = _cache_files(uhd_cache_dir)
    data = cache_file.read_bytes()
    cache_file.write_bytes({"garbage": b"PK\x03\x04 not a zip", "truncated": data[: len(data) // 2], "empty": b""}[damage])
    again = decode_all(tmp_path, ["a.png"], (8, 8), "area", uhd_cache_dir)
    assert not again.from_cache
    np.testing.assert_array_equal(again.images, first.images)
    assert decode_all(tmp_path, ["a.png"], (8, 8), "area", uhd_cache_dir).from_cache


def test_decode_progress_reports_every_file(tmp_path):
    for i in range(5):
        _solid(tmp_path / f"{i}.jpg")
    seen = []
    decode_all(tmp_path, [f"{i}.jpg" for i in range(5)], (8, 8), "area", None, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(d, 5) for d in range(1, 6)]


# ------------------------------------------------------------------------------------------------
# split

FILES = [f"img_{i:03d}.jpg" for i in range(100)]


def test_split_is_deterministic_per_seed_and_independent_of_input_order():
    a = split_files(FILES, 0.8, 0.2, seed=1)
    shuffled = FILES[:]
    random.Random(0).shuffle(shuffled)
    assert split_files(shuffled, 0.8, 0.2, seed=1) == a
    assert split_files(list(reversed(FILES)), 0.8, 0.2, seed=1) == a
    assert split_files(FILES, 0.8, 0.2, seed=2) != a


@pytest.mark.parametrize(("n", "train", "val", "n_train", "n_val"), [
    (100, 0.8, 0.2, 80, 20),
    (100, 0.7, 0.1, 70, 10),
    (10, 0.5, 0.5, 5, 5),
    (7, 0.8, 0.2, 6, 1),
    (3, 1.0, 0.0, 3, 0),
])
def test_split_sizes_follow_the_fractions_and_parts_are_disjoint(n, train, val, n_train, n_val):
    files = FILES[:n]
    tr, va = split_files(files, train, val, seed=0)
    assert (len(tr), len(va)) == (n_train, n_val)
    assert not set(tr) & set(va)
    assert set(tr) | set(va) <= set(files)
    assert tr == sorted(tr) and va == sorted(va)


def test_split_is_a_random_subset_not_the_first_files():
    tr, va = split_files(FILES, 0.5, 0.5, seed=0)
    assert tr != FILES[:50]


# ------------------------------------------------------------------------------------------------
# collate

def test_collate_pads_boxes_with_minus_one_labels():
    img = np.zeros((8, 10, 3), dtype=np.uint8)
    img2 = img.copy()
    img2[1, 2] = (1, 2, 3)
    items = [
        (img, np.array([[0.5, 0.5, 0.2, 0.2], [0.1, 0.2, 0.1, 0.1]], np.float32), np.array([0, 1])),
        (img2, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)),
        (img, np.array([[0.3, 0.3, 0.1, 0.1]], np.float32), np.array([2])),
    ]
    batch = collate_detection(items)
    assert batch.images.shape == (3, 3, 8, 10) and batch.images.dtype.is_floating_point is False
    assert batch.images[1, :, 1, 2].tolist() == [1, 2, 3]  # HWC -> CHW keeps channel order
    assert batch.boxes.shape == (3, 2, 4)
    assert batch.labels.tolist() == [[0, 1], [-1, -1], [2, -1]]
    assert batch.valid.tolist() == [[True, True], [False, False], [True, False]]
    np.testing.assert_array_equal(batch.boxes[0].numpy(), items[0][1])
    np.testing.assert_array_equal(batch.boxes[2, 0].numpy(), items[2][1][0])


def test_collate_of_only_empty_images_still_has_one_padded_slot():
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    batch = collate_detection([(img, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))] * 2)
    assert batch.boxes.shape == (2, 1, 4)
    assert batch.labels.tolist() == [[-1], [-1]]
