"""The string forms of RunConfig values (the original tool's flags) and the range checks of single fields.

Each function is a pydantic field validator of uhd_core.config.RunConfig (``mode="before"`` parsers
take the raw value, checks the parsed one); a ValueError becomes one ``--flag: message`` line.
"""

from __future__ import annotations

from typing import Any

from uhd_core.limits import MAX_CLASS_ID
from uhd_core.errors import bounded

#: Longest --exp-name (one file name: NAME_MAX of common file systems).
MAX_EXP_NAME_BYTES = 255


def check_exp_name(value: str) -> str:
    # The run dir is <runs-dir>/<exp-name>: a name with a separator, '..', or an absolute path would
    # put it elsewhere (`--exp-name ..` made the current folder the run dir and overwrote its
    # config.yaml). Checked here so presets and resumed configs obey it as well as the flag.
    if value in ("", ".", ".."):
        raise ValueError(f"{value!r} is not a folder name; give one name such as 'person_cnn' "
                         "(the run dir is <runs-dir>/<exp-name>)")
    bad = next((c for c in ("/", "\\", "\0") if c in value), None)
    if bad is not None:
        raise ValueError(f"{bounded(repr(value))} must be one folder name, without {bad!r}; use --runs-dir "
                         "to choose the parent folder (the run dir is <runs-dir>/<exp-name>)")
    if len(value.encode("utf-8", "surrogateescape")) > MAX_EXP_NAME_BYTES:
        raise ValueError(f"{bounded(repr(value))} is longer than {MAX_EXP_NAME_BYTES} bytes, "
                         "the longest file name most file systems allow")
    return value


def parse_img_size(value: Any) -> Any:
    """'64x48' (HxW), '64' or 64 -> (H, W)."""
    if isinstance(value, str):
        parts = value.lower().replace(" ", "").split("x")
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"img_size must look like 64x64 (HxW), got {value!r}")
        return (int(parts[0]), int(parts[1]))
    if isinstance(value, int):
        return (value, value)
    return value


def check_img_size(value: tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None:
        return value
    if min(value) < 16 or max(value) > 4096:
        raise ValueError(f"img_size sides must be within 16..4096, got {value[0]}x{value[1]}")
    return value


def parse_path_list(value: Any) -> Any:
    """'a,b', ['a', 'b'] (a preset, or a repeated flag) or ['a,b', 'c'] -> ('a', 'b', 'c'); empty items are dropped."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        items = [part.strip() for v in value for part in (v.split(",") if isinstance(v, str) else [v])]
        return tuple(v for v in items if v != "")
    return value


def parse_classes(value: Any) -> Any:
    """'3,1' or 3 -> (3, 1) / (3,)."""
    if isinstance(value, str):
        items = [v for v in value.replace(" ", "").split(",") if v]
        if not items or not all(v.isdigit() for v in items):
            raise ValueError(f"classes must be comma-separated integers like 0,1 — got {value!r}")
        return tuple(int(v) for v in items)
    if isinstance(value, int):
        return (value,)
    return value


def check_classes(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value:
        raise ValueError("classes must name at least one class id")
    if not all(0 <= v <= MAX_CLASS_ID for v in value):
        raise ValueError(f"class ids must be within 0..{MAX_CLASS_ID}, got {value}")
    if len(set(value)) != len(value):
        raise ValueError(f"classes has duplicates: {value}")
    return value


def parse_anchors(value: Any) -> Any:
    """'0.08,0.10 0.15,0.20' -> ((0.08, 0.10), (0.15, 0.20))."""
    if isinstance(value, str):
        pairs = []
        for item in value.split():
            wh = item.split(",")
            try:
                pairs.append((float(wh[0]), float(wh[1])))
            except (ValueError, IndexError):
                raise ValueError(f"anchors must look like '0.08,0.10 0.15,0.20', bad item {item!r}") from None
            if len(wh) != 2:
                raise ValueError(f"anchors must look like '0.08,0.10 0.15,0.20', bad item {item!r}")
        return tuple(pairs)
    return value


def check_anchors(value: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    # Normalized sides: a NaN, inf, 0 or > 1 anchor would train to NaN or match no box.
    if not all(0.0 < side <= 1.0 for pair in value for side in pair):
        raise ValueError(f"anchor sides are normalized and must be within (0, 1], got {value}")
    return value


def parse_key_values(value: Any) -> Any:
    """'k=v,k2=v2' (the flag; values stay strings) or a mapping (YAML, a stored config) -> ((k, v), ...)."""
    if isinstance(value, str):
        pairs = []
        for item in (v.strip() for v in value.split(",") if value.strip()):
            key, sep, val = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"must look like 'key=value,key=value', bad item {bounded(repr(item), 80)}")
            pairs.append((key.strip(), val.strip()))
        return tuple(pairs)
    if isinstance(value, dict):
        return tuple(value.items())
    return value


def scalar(text: str) -> str | int | float | bool:
    """A flag's text as the value it spells: true/false -> bool, then int, then float, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
