"""Validation of op parameters read from YAML.

YAML is lenient (``1e-8`` without a dot is a *string* under ``yaml.safe_load``), so numbers are
accepted as int, float or numeric string; everything else raises ``AugmentConfigError`` with a
one-line message naming ``Op.key``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from uhd_core.augment.errors import AugmentConfigError


def _fail(where: str, expected: str, value: Any) -> AugmentConfigError:
    return AugmentConfigError(f"{where}: expected {expected}, got {value!r}")


def as_float(value: Any, where: str, *, lo: float = -math.inf, hi: float = math.inf) -> float:
    """One finite float in ``[lo, hi]``."""
    if isinstance(value, bool):
        raise _fail(where, "a number", value)
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise _fail(where, "a number", value) from None
    if not math.isfinite(out) or not lo <= out <= hi:
        raise _fail(where, f"a number in [{lo:g}, {hi:g}]", value)
    return out


def as_int(value: Any, where: str, *, lo: int = -(2**31), hi: int = 2**31) -> int:
    out = as_float(value, where, lo=lo, hi=hi)
    if out != int(out):
        raise _fail(where, "an integer", value)
    return int(out)


def as_bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(where, "true or false", value)
    return value


def as_pair(
    value: Any, where: str, *, lo: float = -math.inf, hi: float = math.inf, ordered: bool = True
) -> tuple[float, float]:
    """``[a, b]`` (or a bare number ``a`` meaning ``[a, a]``) with ``lo <= a (<=) b <= hi``."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 2:
            raise _fail(where, "a number or a [low, high] pair", value)
        a, b = (as_float(v, where, lo=lo, hi=hi) for v in value)
    else:
        a = b = as_float(value, where, lo=lo, hi=hi)
    if ordered and a > b:
        raise _fail(where, "[low, high] with low <= high", value)
    return a, b


def as_int_pair(value: Any, where: str, *, lo: int = -(2**31), hi: int = 2**31) -> tuple[int, int]:
    a, b = as_pair(value, where, lo=lo, hi=hi)
    if a != int(a) or b != int(b):
        raise _fail(where, "integers", value)
    return int(a), int(b)


def as_fill(value: Any, where: str) -> tuple[int, int, int]:
    """A grey level ``v`` or an ``[r, g, b]`` triple, each 0..255."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 3:
            raise _fail(where, "a grey level or an [r, g, b] triple", value)
        r, g, b = (as_int(v, where, lo=0, hi=255) for v in value)
        return r, g, b
    v = as_int(value, where, lo=0, hi=255)
    return v, v, v


def odd_kernel_range(value: Any, where: str, *, lo: int) -> tuple[int, int]:
    """Kernel-size range ``[a, b]`` (bare ``k`` = fixed size), even sizes rounded up to odd.

    Rounding up (``k | 1``) is what the original tool did; doing it here also keeps albumentations
    from warning about even sizes on every pipeline build.
    """
    a, b = as_int_pair(value, where, lo=lo, hi=99)
    # 0 (allowed only where lo == 0) means "derive the size from sigma" and stays 0.
    return (a | 1 if a else 0), (b | 1 if b else 0)
