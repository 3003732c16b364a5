"""Everything UHD writes goes through here: one rule for every output path, atomic writes, and one
line for every OS failure.

The rule (docs/RELIABILITY.md, "Nothing the user owns is destroyed"):

- an output is never one of the command's inputs, and never lies inside (or contains) an input
  folder: not even with ``--overwrite`` (``uhd export x.pt --output x.pt`` would replace the
  checkpoint, ``predict --out SRC`` the source images, ``eval m.onnx --json m.onnx`` the model);
- an existing output file is replaced only with ``--overwrite``;
- the folder it goes in must be writable, and that is checked *before* the work, so a read-only
  target fails in a second, not after an hour of evaluation.

Writes are atomic (temp file in the same folder, fsync, rename, fsync of the folder): a reader, or
a kill -9, sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from uhd_core.errors import OutputError, bounded

#: Prefix of every temp file UHD creates next to an output; resume and cleanup look for it.
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


def temp_path_for(path: Path) -> Path:
    """Where ``path`` is written before the rename: hidden, same folder (a rename within one
    file system is atomic), tagged with the pid so two writers never share one."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}{TEMP_SUFFIX}")


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write via a temp file in the same directory + fsync + rename: readers see old or new, never half.

    ``write(fh)`` writes the content to a binary file handle. Raises ``OSError`` as the OS did
    (callers that face the user wrap it with ``describe_os_error``); the temp file is removed.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda fh: fh.write(text.encode("utf-8")))


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: some file systems refuse a dir fsync)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


_ERRNO_ADVICE = {
    errno.EROFS: "read-only file system; choose a path on a writable disk",
    errno.ENOSPC: "no space left on the device; free some space or choose another disk",
    errno.EDQUOT: "disk quota exceeded; free some space or choose another disk",
    errno.EACCES: "permission denied; choose a folder you can write to",
    errno.EPERM: "operation not permitted; choose a folder you can write to",
    errno.ENAMETOOLONG: "file name too long; choose a shorter path",
    errno.EISDIR: "is a folder; give a file path",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def describe_os_error(exc: OSError, path: Path | str, action: str = "cannot write") -> str:
    """One line for an OS failure on ``path``: what happened and what to do (no errno numbers)."""
    advice = _ERRNO_ADVICE.get(exc.errno or -1) or bounded(exc.strerror or exc)
    return f"{action} {bounded(path)}: {advice}"


def write_output(path: Path, data: bytes | str, flag: str = "output") -> None:
    """Atomically write ``data`` to ``path`` (parents created); an OS failure becomes an OutputError."""
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, lambda fh: fh.write(payload))
    except OSError as exc:
        raise OutputError(f"{flag}: {describe_os_error(exc, path)}") from None


def move_output(src: Path, dst: Path, flag: str = "output") -> None:
    """Rename ``src`` (a finished temp file) to ``dst`` atomically and durably; an OS failure becomes
    an OutputError naming ``dst``."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        raise OutputError(f"{flag}: {describe_os_error(exc, dst)}") from None
    fsync_dir(Path(dst).parent)


def encode_image(image_bgr: Any, suffix: str) -> bytes:
    """(H, W, 3) uint8 BGR -> the bytes of an image file of type ``suffix`` (``.jpg``, ``.png``, ...).

    Encoding in memory is how UHD writes images: ``cv2.imwrite`` takes the path as UTF-8 and
    crashes the process (SIGSEGV) on a file name that is not valid UTF-8, e.g. a Shift-JIS name
    from a Japanese zip (Python holds it as a surrogate-escaped str). An unknown suffix is PNG.
    """
    import cv2

    suffix = suffix.lower() if native_path_ok(suffix) else ""
    ok, data = cv2.imencode(suffix, image_bgr) if suffix else (False, None)
    if not ok:
        ok, data = cv2.imencode(".png", image_bgr)
    if not ok:
        raise OutputError("cannot encode the image (OpenCV's encoder failed)")
    return data.tobytes()


def write_image(path: Path, image_bgr: Any, flag: str = "output") -> None:
    """Encode ``image_bgr`` by ``path``'s suffix and write it atomically (see ``encode_image``)."""
    write_output(path, encode_image(image_bgr, Path(path).suffix), flag)


def native_path_ok(path: Path | str) -> bool:
    """Whether a C++ library (OpenCV, ONNX Runtime) may be handed ``path`` as a str: they read it
    as UTF-8, and OpenCV crashes the process (SIGSEGV) on a surrogate-escaped (non-UTF-8) name."""
    try:
        os.fspath(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@contextmanager
def opencv_path(path: Path | str) -> Iterator[str]:
    """A str for OpenCV APIs that only take a path (``cv2.VideoCapture``): ``path`` itself, or,
    when its name is not valid UTF-8, an ASCII-named symlink to it in a temp folder."""
    if native_path_ok(path):
        yield os.fspath(path)
        return
    suffix = Path(path).suffix
    with tempfile.TemporaryDirectory(prefix="uhd_cv2_") as tmp:
        link = Path(tmp) / ("input" + (suffix if suffix.isascii() else ""))
        os.symlink(os.path.abspath(os.fspath(path)), link)
        yield str(link)


def _real(path: Path) -> Path:
    """Absolute path with symlinks resolved as far as the path exists (``strict=False``)."""
    try:
        return Path(os.path.realpath(os.path.abspath(os.fspath(path))))
    except (OSError, ValueError):
        return Path(os.path.abspath(os.fspath(path)))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or ".")


def _check_writable_folder(folder: Path, flag: str, shown: Path) -> None:
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise OutputError(f"{flag} {bounded(shown)}: {bounded(existing)} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = "read-only file system" if _read_only_fs(existing) else "permission denied"
        raise OutputError(f"{flag} {bounded(shown)}: cannot write in {bounded(existing)} ({reason}); "
                          "choose a folder you can write to")
    if _read_only_fs(existing):
        raise OutputError(f"{flag} {bounded(shown)}: {bounded(existing)} is on a read-only file system; "
                          "choose a path on a writable disk")


def _read_only_fs(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (OSError, AttributeError):
        return False


def _collisions(target: Path, inputs: Iterable[Path | str | None], input_dirs: Iterable[Path | str | None],
                target_is_dir: bool) -> str | None:
    real_target = _real(target)
    for source in inputs:
        if source is None:
            continue
        real_source = _real(Path(source))
        if real_target == real_source:
            return f"is the input {bounded(source)}"
        if target_is_dir and _is_within(real_source, real_target):
            return f"contains the input {bounded(source)}"
        if Path(source).is_dir() and _is_within(real_target, real_source):
            return f"lies inside the input folder {bounded(source)}"
    for folder in input_dirs:
        if folder is None:
            continue
        real_folder = _real(Path(folder))
        if _is_within(real_target, real_folder):
            return f"lies inside the input dataset {bounded(folder)}"
        if target_is_dir and _is_within(real_folder, real_target):
            return f"contains the input dataset {bounded(folder)}"
    return None


def check_output_file(path: Path, *, flag: str, overwrite: bool = False,
                      inputs: Iterable[Path | str | None] = (),
                      input_dirs: Iterable[Path | str | None] = ()) -> Path:
    """Refuse (``OutputError``, one line) an output file that would destroy something; returns ``path``.

    ``inputs``: files or folders the command reads; ``input_dirs``: datasets whose whole tree is
    off-limits. Call it before the work: it also checks that the target folder is writable.
    """
    path = Path(path)
    clash = _collisions(path, inputs, input_dirs, target_is_dir=False)
    if clash:
        raise OutputError(f"{flag} {bounded(path)} {clash}; an output never replaces an input "
                          "(not even with --overwrite): choose another path")
    if path.is_dir():
        raise OutputError(f"{flag} {bounded(path)} is a folder; give a file path")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise OutputError(f"{flag} {bounded(path)} exists; pass --overwrite to replace it, or choose another path")
        if not path.is_file():
            raise OutputError(f"{flag} {bounded(path)} exists and is not a regular file; choose another path")
    _check_writable_folder(path.parent, flag, path)
    return path


def check_output_dir(path: Path, *, flag: str, overwrite: bool = False,
                     inputs: Iterable[Path | str | None] = (),
                     input_dirs: Iterable[Path | str | None] = ()) -> Path:
    """Like ``check_output_file`` for an output *folder*: it may not be, contain or lie inside an
    input; one that already holds files needs ``overwrite``."""
    path = Path(path)
    clash = _collisions(path, inputs, input_dirs, target_is_dir=True)
    if clash:
        raise OutputError(f"{flag} {bounded(path)} {clash}; an output never replaces an input "
                          "(not even with --overwrite): choose another folder")
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {bounded(path)} is a file; give a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputError(f"{flag} {bounded(path)} already holds files; pass --overwrite or choose another folder")
    _check_writable_folder(path, flag, path)
    return path
