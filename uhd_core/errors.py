"""Exceptions the CLI turns into one-line errors (exit code 2) instead of tracebacks."""


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


class TrainingError(UhdError):
    """Training started but could not go on (diverged, a save failed, a data-loader worker died).

    Exit code 1: the request was valid; the run failed. Its last good checkpoint is kept.
    """

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
