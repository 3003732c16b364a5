"""Reading the ``data_augment:`` YAML into a list of ``AugOpSpec``.

Accepted shapes (ops run in the order written)::

    data_augment:                      data_augment:
      HorizontalFlip:                    - HorizontalFlip: {prob: 0.5}
        prob: 0.5                        - ToGray: 0.01
      ToGray: 0.01                       - {name: RemoveOutliers, min_area: 1e-4}
      RemoveOutliers: 1e-8

An op's value is a mapping of its keys (``prob`` = apply probability), a bare number (the
probability; for RemoveOutliers the minimum normalized box area), or empty/``false`` (disabled).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePath
from typing import Any


# Importing the op modules registers the ops.
from uhd_core.augment import geometric, photometric, unimplemented  # noqa: F401
from uhd_core.augment._params import as_float
from uhd_core.augment.errors import AugmentConfigError, AugmentConfigNotFoundError, UnknownAugmentOpError
from uhd_core.augment.registry import AUGMENT_OP_INFO, AUGMENT_OPS
from uhd_core.config import ORIGINAL_DEFAULT_AUG_CONFIG
from uhd_core.yaml_io import YamlRefused, load_yaml

#: The original tool's default path; it names the built-in default config here (defined once, with
#: the --aug-config default it is, in uhd_core.config).
ORIGINAL_DEFAULT_PATH = ORIGINAL_DEFAULT_AUG_CONFIG
DEFAULT_CONFIG_RESOURCE = "default.yaml"
#: Built-in configs by the name a YAML/flag uses -> package resource in uhd_core/augment/.
BUILTIN_CONFIGS = {ORIGINAL_DEFAULT_PATH: DEFAULT_CONFIG_RESOURCE, "uhd/aug_tiny.yaml": "tiny.yaml"}


@dataclass(frozen=True)
class AugOpSpec:
    """One parsed ``data_augment`` entry: op ``name``, apply probability ``prob`` in [0, 1], and the
    op's own keys ``params`` (unknown keys already removed)."""

    name: str
    prob: float
    params: dict[str, Any] = field(default_factory=dict)


def _known_ops_message() -> str:
    return ", ".join(sorted(AUGMENT_OPS))


def check_op_name(name: Any, origin: str) -> str:
    if not isinstance(name, str) or name not in AUGMENT_OPS:
        raise UnknownAugmentOpError(f"{origin}: unknown augment op {name!r}; known ops: {_known_ops_message()}")
    return name


def _stacklevel_outside_package() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller that points at the first frame outside
    uhd_core/augment (the user's call), however deep the loader's own call chain is."""
    here = str(Path(__file__).resolve().parent)
    frame = sys._getframe(1)
    level = 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(here):
        frame = frame.f_back
        level += 1
    return level


def filter_op_params(name: str, params: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Drop keys op ``name`` does not take, with one ``UserWarning`` naming them all."""
    keys = AUGMENT_OP_INFO[name].keys
    if keys is None:
        return dict(params)
    unknown = [str(k) for k in params if k not in keys]
    if unknown:
        known = ", ".join(sorted({"prob", *keys}))
        warnings.warn(
            f"{origin}: augment op {name!r} ignores unknown key(s) {', '.join(unknown)} (known: {known})",
            UserWarning,
            stacklevel=_stacklevel_outside_package(),
        )
    return {k: v for k, v in params.items() if k in keys}


def _parse_prob(value: Any, name: str, origin: str) -> float:
    try:
        return as_float(value, f"{name}.prob", lo=0.0, hi=1.0)
    except AugmentConfigError as exc:
        raise AugmentConfigError(f"{origin}: {exc}") from None


def _parse_entry(name: Any, value: Any, origin: str) -> AugOpSpec:
    name = check_op_name(name, origin)
    info = AUGMENT_OP_INFO[name]
    if value is None or value is False:
        return AugOpSpec(name, 0.0, {})
    if value is True:
        if info.bare_value is not None:
            raise AugmentConfigError(f"{origin}: {name}: expected a number or a mapping, got true")
        return AugOpSpec(name, 1.0, {})
    if isinstance(value, (int, float, str)):
        if info.bare_value is not None:
            return AugOpSpec(name, info.default_prob, {info.bare_value: value})
        return AugOpSpec(name, _parse_prob(value, name, origin), {})
    if isinstance(value, Mapping):
        params = dict(value)
        prob = _parse_prob(params.pop("prob"), name, origin) if "prob" in params else info.default_prob
        return AugOpSpec(name, prob, filter_op_params(name, params, origin))
    raise AugmentConfigError(
        f"{origin}: {name}: expected a mapping of keys, a number or nothing, got {type(value).__name__}"
    )


def parse_augment_specs(data: Any, origin: str = "<augment config>") -> list[AugOpSpec]:
    """Parse an already-loaded YAML document ``{"data_augment": ...}`` (see module docstring)."""
    if not isinstance(data, Mapping) or "data_augment" not in data:
        got = "an empty document" if data is None else type(data).__name__
        raise AugmentConfigError(f"{origin}: expected a mapping with a top-level 'data_augment:' key, got {got}")
    ops = data["data_augment"]
    if ops is None:
        return []
    if isinstance(ops, Mapping):
        return [_parse_entry(name, value, origin) for name, value in ops.items()]
    if not isinstance(ops, list):
        raise AugmentConfigError(f"{origin}: 'data_augment' must be a list or mapping of ops, got {type(ops).__name__}")
    specs = []
    for i, item in enumerate(ops):
        where = f"{origin}: data_augment[{i}]"
        if isinstance(item, str):  # "- HorizontalFlip" alone: listed but no prob, i.e. disabled
            specs.append(_parse_entry(item, None, origin))
        elif isinstance(item, Mapping) and "name" in item:
            rest = {k: v for k, v in item.items() if k != "name"}
            specs.append(_parse_entry(item["name"], rest, origin))
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, value),) = item.items()
            specs.append(_parse_entry(name, value, origin))
        else:
            raise AugmentConfigError(
                f"{where}: expected '{{OpName: {{...}}}}' or '{{name: OpName, ...}}', got {item!r}"
            )
    return specs


def _builtin_resource(source: str | Path | None) -> str | None:
    """The package resource a source names (None = the default), or None for a file path."""
    if source is None:
        return DEFAULT_CONFIG_RESOURCE
    text = source.as_posix() if isinstance(source, PurePath) else str(source)
    return BUILTIN_CONFIGS.get(text)


def default_config_text(resource: str = DEFAULT_CONFIG_RESOURCE) -> str:
    """A built-in config (``uhd_core/augment/default.yaml`` unless named), read as package data."""
    return resources.files("uhd_core.augment").joinpath(resource).read_text(encoding="utf-8")


def load_augment_specs(source: str | Path | None) -> list[AugOpSpec]:
    """Read the ops of a ``data_augment:`` YAML file, in order.

    ``source``: a YAML path; ``None`` or the original tool's default ``"uhd/aug.yaml"`` mean the
    built-in default (the original's config), ``"uhd/aug_tiny.yaml"`` UHD's tuned built-in. Raises ``FileNotFoundError`` (missing file), ``UnknownAugmentOpError``
    (unknown op; lists the known ones), ``ValueError`` (anything else malformed); unknown keys
    inside an op are dropped with a ``UserWarning``.
    """
    resource = _builtin_resource(source)
    if resource is not None:
        origin = f"<built-in uhd_core/augment/{resource}>"
        text = default_config_text(resource)
    else:
        path = Path(source)  # type: ignore[arg-type]
        origin = str(path)
        if not path.is_file():
            raise AugmentConfigNotFoundError(f"augmentation config not found: {path}")
        text = path.read_text(encoding="utf-8")
    try:
        data = load_yaml(text)
    except YamlRefused as exc:
        raise AugmentConfigError(f"{origin}: {exc}") from None
    return parse_augment_specs(data, origin)
