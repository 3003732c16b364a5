"""Build-by-name registries (an unknown name fails with the list of known names) and the model families.

A model family is a backbone (``--arch NAME``) plus the heads it can carry. Each family declares its
facts in its own module, next to its code, as a :class:`FamilySpec` (the way timm's model files carry
their ``default_cfgs``); head classes declare theirs as class attributes (``grid``, ``smoke_config``).
The config reads the facts from here and never imports a model module.

Floors: this module is on the ground floor, so it cannot import the model floor. The built-in
families register themselves when their modules are imported; :func:`load_families` imports every
module of the model and head packages by name (``importlib``, a plugin discovery rather than an
import of a known module) the first time the config needs a fact. A new family is therefore only
its own file(s): nothing here or in the config lists it.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from uhd_core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's own family or head; a missing name is not an error)."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._items)) or 'none'}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class FamilySpec:
    """What the config needs to know about one ``--arch`` (declared in the family's own module).

    - ``heads``: registry names of the heads it can carry, the default (``--use-anchor`` not given) first;
      ``--use-anchor`` picks the one named ``anchor``.
    - ``title``: how messages name the family ("CNN").
    - ``stride_field``: for a backbone whose heads predict on a grid (input sides must be multiples of
      its output stride): the RunConfig field, or the ``--arch-options`` key, holding that stride; ``stride``:
      a fixed stride instead. Neither: any input size (e.g. a transformer predicting normalized boxes).
    - ``teachers``: teacher flag (a RunConfig field such as ``teacher_backbone``) -> what it distils into
      this family; a teacher flag no family lists is refused for every ``--arch``.
    - ``options``: a pydantic model of the family's own hyperparameters, given as ``--arch-options
      key=value,...`` (None: the family takes none; its settings are RunConfig fields).
    - ``smoke_config``: RunConfig overrides that make a tiny, fast instance (contract tests, smoke runs).
    """

    name: str
    heads: tuple[str, ...]
    title: str = ""
    stride_field: str = ""
    stride: int = 0
    teachers: Mapping[str, str] = field(default_factory=dict)
    options: type | None = None
    smoke_config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.heads:
            raise ValueError(f"family {self.name!r} declares no heads")
        object.__setattr__(self, "title", self.title or self.name)
        object.__setattr__(self, "teachers", _frozen(self.teachers))
        object.__setattr__(self, "smoke_config", _frozen(self.smoke_config))

    @property
    def default_head(self) -> str:
        return self.heads[0]


#: --arch name -> FamilySpec (models/registry.py registers a family's builder and spec together).
FAMILIES: Registry[FamilySpec] = Registry("architecture (--arch)")
#: head name -> DetectorHead subclass (defined in uhd_core/heads/; its facts are class attributes).
HEADS: Registry[Any] = Registry("detector head")

#: Packages whose modules register families and heads on import (see load_families).
FAMILY_PACKAGES = ("uhd_core.models", "uhd_core.heads")
_loaded = False


def load_families() -> None:
    """Import every module of FAMILY_PACKAGES once, so the built-in families and heads are registered."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a module being imported may itself validate a config
    for package_name in FAMILY_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{package_name}.{info.name}")


def family(name: str) -> FamilySpec:
    """The registered family ``name`` (ConfigError listing the known ones otherwise)."""
    load_families()
    return FAMILIES.get(name)


def head_class(name: str) -> Any:
    """The registered head class ``name`` (ConfigError listing the known ones otherwise)."""
    load_families()
    return HEADS.get(name)


def families() -> list[FamilySpec]:
    load_families()
    return [FAMILIES.get(name) for name in FAMILIES.names()]
