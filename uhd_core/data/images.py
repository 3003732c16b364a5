"""Decode any image file into RGB uint8 and resize it once to the training size.

Every decode goes through ``read_image_bytes``: the file guard of ``uhd_core.data.files`` (regular
files only, not out of the dataset) and a pixel budget read from the file's *header*, before
OpenCV allocates anything: an 875 KB PNG can declare 30000x30000 pixels and decode to 2.7 GB
(PIL's ``MAX_IMAGE_PIXELS`` guards the same way).
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

from uhd_core.data.files import DEFAULT_MAX_IMAGE_PIXELS, FileRefused, read_dataset_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "nearest": cv2.INTER_NEAREST}

#: Bytes per pixel no real image file exceeds (16-bit RGBA stored uncompressed), plus room for
#: metadata: a file larger than this for the budget is refused before it is read into memory.
_MAX_BYTES_PER_PIXEL = 8
_METADATA_SLACK = 64 << 20

_HEADER_FORMATS = "JPEG, PNG, BMP, WebP, TIFF or PNM"


class ImageDecodeError(Exception):
    pass


class ImageTooLarge(ImageDecodeError):
    """The header declares more pixels than the budget; nothing was decoded."""


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    n = len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:  # stray bytes between segments: libjpeg skips to the next marker too
            i += 1
            continue
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # standalone markers carry no length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        # SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC) hold the frame size.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > n:
                return None
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h
        if marker in (0xD9, 0xDA):  # end of image / start of scan before any frame header
            return None
        i += 2 + length
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    endian = "<" if data[:2] == b"II" else ">"
    try:
        (ifd,) = struct.unpack(endian + "I", data[4:8])
        (count,) = struct.unpack(endian + "H", data[ifd:ifd + 2])
        size: dict[int, int] = {}
        for k in range(count):
            entry = data[ifd + 2 + 12 * k: ifd + 14 + 12 * k]
            tag, typ = struct.unpack(endian + "HH", entry[:4])
            if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (type 3) or LONG
                fmt, end = ("H", 10) if typ == 3 else ("I", 12)
                (size[tag],) = struct.unpack(endian + fmt, entry[8:end])
        return size[256], size[257]
    except (struct.error, KeyError):
        return None


def _pnm_size(data: bytes) -> tuple[int, int] | None:
    if data[:2] == b"P7":  # PAM: "WIDTH w" / "HEIGHT h" lines
        fields = data[:4096].split()
        try:
            return int(fields[fields.index(b"WIDTH") + 1]), int(fields[fields.index(b"HEIGHT") + 1])
        except (ValueError, IndexError):
            return None
    tokens: list[bytes] = []
    for line in data[2:4096].splitlines():
        tokens += line.split(b"#", 1)[0].split()
        if len(tokens) >= 2:
            try:
                return int(tokens[0]), int(tokens[1])
            except ValueError:
                return None
    return None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as the file's header declares it, without decoding; None = not a format
    whose header is known here (JPEG, PNG, BMP, WebP, TIFF, PNM/PAM/PFM) or a header cut short."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:2] == b"BM":
            (dib,) = struct.unpack("<I", data[14:18])
            if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sides
                return struct.unpack("<HH", data[18:22])
            w, h = struct.unpack("<ii", data[18:26])
            return abs(w), abs(h)  # a negative height means top-down rows
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return w & 0x3FFF, h & 0x3FFF
            if chunk == b"VP8L":
                (bits,) = struct.unpack("<I", data[21:25])
                return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
            if chunk == b"VP8X":
                return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
            return None
        if data[:4] in (b"II*\x00", b"MM\x00*"):
            return _tiff_size(data)
        if data[:1] == b"P" and data[1:2] in b"1234567fF" and data[1:2]:
            return _pnm_size(data)
    except struct.error:
        return None
    return None


def check_pixel_budget(data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the header, or ImageDecodeError: an unknown or cut-short header, a side
    of 0, or ImageTooLarge above ``max_pixels``. Nothing is decoded."""
    size = header_size(data)
    if size is None:
        raise ImageDecodeError(f"not decodable (truncated, or not a {_HEADER_FORMATS} image)")
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"not decodable (its header declares {w}x{h} pixels)")
    if w * h > max_pixels:
        raise ImageTooLarge(f"{w}x{h} pixels ({w * h / 1e6:.0f} Mpx) is above --max-image-pixels {max_pixels} "
                            "(not decoded; raise --max-image-pixels to use it)")
    return w, h


def read_image_bytes(path: Path, root: Path | None = None, follow_symlinks: bool = False,
                     max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> bytes:
    """The file's bytes once it passed the file guard and the header's pixel budget (else ImageDecodeError)."""
    try:
        data = read_dataset_file(path, root, follow_symlinks,
                                 max_bytes=_MAX_BYTES_PER_PIXEL * max_pixels + _METADATA_SLACK)
    except FileRefused as exc:
        raise ImageDecodeError(str(exc)) from None
    if not data:
        raise ImageDecodeError("empty file")
    check_pixel_budget(data, max_pixels)
    return data


def decode_image(path: Path, root: Path | None = None, follow_symlinks: bool = False,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Return (H, W, 3) uint8 RGB.

    IMREAD_COLOR turns grayscale, CMYK and 16-bit files into 8-bit 3-channel images and applies
    the EXIF orientation, so every source format ends up the way a viewer shows it. ``root``,
    ``follow_symlinks``, ``max_pixels``: see ``read_image_bytes``.
    """
    data = read_image_bytes(path, root, follow_symlinks, max_pixels)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError("not a decodable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_image(image: np.ndarray, size_hw: tuple[int, int], interpolation: str = "area") -> np.ndarray:
    """Stretch-resize (no letterbox) to (H, W); YOLO-normalized boxes stay valid unchanged."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return np.ascontiguousarray(image)
    return cv2.resize(image, (w, h), interpolation=INTERPOLATIONS[interpolation])
