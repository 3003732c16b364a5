"""The one guard every read of a dataset file goes through (images and labels alike).

A dataset folder is user input of unknown origin (a zip from the web, a share, a symlink farm):

- only *regular* files are read: opening a FIFO named ``x.txt`` blocks forever, a device can be
  endless or have side effects, so those (and sockets) are refused from ``stat`` before any open,
  and the open itself is non-blocking with a second check on the open file (no race);
- a file whose real path leaves the dataset folder (``y.txt -> /etc/shadow``) is refused unless
  ``--follow-symlinks``: a report would otherwise quote another file's lines;
- names are arbitrary bytes: Python hands non-UTF-8 names (Shift-JIS from a Japanese zip) over as
  surrogate-escaped ``str``, which cannot be encoded as UTF-8. Hashing goes through
  ``os.fsencode`` and every message renders names with ``shown`` (``\\x82`` escapes).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from uhd_core.errors import bounded
from uhd_core.limits import DEFAULT_MAX_IMAGE_PIXELS  # noqa: F401  (re-exported for the readers)


_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # absent on Windows, which has no FIFOs in folders
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class FileRefused(Exception):
    """A dataset file that is not read; the message says why in words (without the path)."""


def shown(path: object, limit: int = 200) -> str:
    """``path`` as printable text, bounded: bytes that are not UTF-8 appear as ``\\x82`` escapes.

    A surrogate-escaped name printed or written as UTF-8 raises UnicodeEncodeError (train.log,
    the terminal), so every message that names a dataset file goes through this.
    """
    text = os.fspath(path) if isinstance(path, (str, os.PathLike)) else str(path)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    try:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (e.g. from JSON)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return bounded(text, limit)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def real_root(root: str | Path) -> str:
    """The dataset folder with symlinks resolved: what 'inside the dataset' is measured against."""
    return os.path.realpath(os.fspath(root))


def is_inside(path: str | Path, root_real: str) -> bool:
    """Whether ``path``'s real location (every symlink resolved) is ``root_real`` or below it."""
    real = os.path.realpath(os.fspath(path))
    return real == root_real or real.startswith(root_real.rstrip(os.sep) + os.sep)


def check_dataset_file(path: str | Path, root: str | Path | None = None,
                       follow_symlinks: bool = False) -> os.stat_result:
    """Refuse (``FileRefused``) what must not be opened; else the file's ``stat``.

    ``root``: the dataset folder; with it (and not ``follow_symlinks``) a file whose real path lies
    outside is refused. Without ``root`` only the regular-file rule applies.
    """
    if root is not None and not follow_symlinks and not is_inside(path, real_root(root)):
        raise FileRefused("a symlink leading outside the dataset folder (pass --follow-symlinks to read it)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileRefused("broken symlink" if os.path.islink(path) else "no such file") from None
    except OSError as exc:
        raise FileRefused(f"unreadable ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(f"{_kind(st.st_mode)}, not a regular file")
    return st


def read_dataset_file(path: str | Path, root: str | Path | None = None, follow_symlinks: bool = False,
                      max_bytes: int | None = None) -> bytes:
    """The bytes of a regular file, after ``check_dataset_file``; at most ``max_bytes`` (larger: refused)."""
    st = check_dataset_file(path, root, follow_symlinks)
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileRefused(f"{st.st_size / 1e6:.0f} MB is larger than any file this limit allows "
                          f"({max_bytes / 1e6:.0f} MB)")
    try:
        # Non-blocking: if the path was swapped for a FIFO after the stat, the open still returns.
        fd = os.open(path, os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(f"unreadable ({exc.strerror or type(exc).__name__})") from None
    with os.fdopen(fd, "rb") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise FileRefused(f"{_kind(mode)}, not a regular file")
        try:
            data = fh.read() if max_bytes is None else fh.read(max_bytes + 1)
        except OSError as exc:
            raise FileRefused(f"unreadable ({exc.strerror or type(exc).__name__})") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise FileRefused(f"larger than any file this limit allows ({max_bytes / 1e6:.0f} MB)")
    return data
