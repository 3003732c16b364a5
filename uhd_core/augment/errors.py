"""Augmentation-config errors.

They subclass both the project's ``ConfigError`` (so the CLI shows them as one line, exit code 2)
and the matching builtin (``ValueError`` / ``FileNotFoundError``) so plain-Python callers can catch
the usual exception types.
"""

from __future__ import annotations

from uhd_core.errors import ConfigError


class AugmentConfigError(ConfigError, ValueError):
    """An augmentation YAML or op parameter of the wrong shape; the message is one line."""


class UnknownAugmentOpError(AugmentConfigError):
    """An op name that is not registered; the message lists the known ops."""


class AugmentConfigNotFoundError(ConfigError, FileNotFoundError):
    """The augmentation YAML path does not exist."""
