"""Exceptions the CLI turns into one-line errors (exit code 2) instead of tracebacks, and the one
formatter that keeps any quoted user input short."""

from __future__ import annotations

#: Characters of user input (a YAML value, a label line, a path) an error message may quote.
QUOTE_LIMIT = 200
#: Characters of a whole error line; beyond it the line is cut (a message built from many quotes).
MESSAGE_LIMIT = 2000


class UhdError(Exception):
    """Base class: a problem the user can fix; the message is shown as one line."""

    exit_code = 2


class ConfigError(UhdError):
    """Bad flags, preset or YAML."""


class DataError(UhdError):
    """Missing or unusable dataset."""


class CheckpointError(UhdError):
    """A checkpoint that cannot be loaded safely or is of an unknown format."""


class RunDirError(UhdError):
    """A run directory that would be overwritten, or that cannot be written."""


class OutputError(UhdError):
    """An output path that would destroy an input or an existing file, or that cannot be written."""


class TrainingError(UhdError):
    """Training started but could not go on (diverged, a save failed, a data-loader worker died).

    Exit code 1: the request was valid; the run failed. Its last good checkpoint is kept.
    """

    exit_code = 1


def bounded(text: object, limit: int = QUOTE_LIMIT) -> str:
    """``str(text)`` on one line and at most ``limit`` characters (then ``...``).

    Every message that quotes user input goes through this: a 411-byte YAML alias bomb expands to a
    2 GB ``repr``, and a label file can hold a megabyte on one line. ``repr`` of huge containers is
    itself the cost, so containers are summarised instead of rendered.
    """
    if isinstance(text, (list, tuple, dict, set)) and len(text) > 50:
        text = f"<{type(text).__name__} of {len(text)} items>"
    s = text if isinstance(text, str) else str(text)
    if len(s) > 4 * limit:  # do not even split a huge string into lines
        s = s[: 4 * limit]
    s = " ".join(s.split())
    return s if len(s) <= limit else s[: max(limit - 3, 0)] + "..."


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), bounded, for one-line errors."""
    text = str(exc)[: 4 * QUOTE_LIMIT].strip()
    return bounded(text.splitlines()[0], QUOTE_LIMIT) if text else type(exc).__name__
