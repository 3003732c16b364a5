"""Preset files: where they are found and how one is read (a mapping of RunConfig keys).

Split from uhd_core.config (which re-exports these names) so the config module holds the settings
and their rules only; nothing here knows the RunConfig fields.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from uhd_core.errors import ConfigError
from uhd_core.yaml_io import YamlRefused, load_yaml


def _preset_dirs() -> list[Path]:
    """Preset search path: the checkout's presets/ first, then the copy installed in the package."""
    dirs = [Path(__file__).resolve().parent.parent / "presets"]
    try:
        dirs.append(Path(str(resources.files("uhd_core") / "presets")))
    except (ModuleNotFoundError, TypeError):  # pragma: no cover - zipped installs
        pass
    return [d for d in dirs if d.is_dir()]


def available_presets() -> list[str]:
    names: set[str] = set()
    for d in _preset_dirs():
        names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def resolve_preset(name_or_path: str) -> Path:
    """A preset name (presets/NAME.yaml) or a path to a YAML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
        return candidate
    for d in _preset_dirs():
        path = d / f"{name_or_path}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"unknown preset {name_or_path!r}; available: {', '.join(available_presets()) or 'none'}")


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except YamlRefused as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a YAML text file (not UTF-8)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(data).__name__}")
    return data
