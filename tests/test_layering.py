"""The floors of uhd_core (docs/DESIGN.md, "Layering"): a module imports only its own floor or lower.

Every module of uhd_core is parsed with ast; every import counts, at module level or inside a
function (a lazy import is still an arrow), relative or absolute, ``importlib.import_module("...")``
and ``__import__("...")`` with a literal name. A new module that belongs to no floor fails too, so
each new file is placed on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "uhd_core"

#: Lowest first. A name covers the module and everything below it (``uhd_core.models`` covers
#: ``uhd_core.models.cnn``); "uhd_core" itself is only the package's ``__init__`` (its version).
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("uhd_core", "uhd_core.errors", "uhd_core.limits", "uhd_core.registry", "uhd_core.outputs",
                "uhd_core.yaml_io", "uhd_core.config", "uhd_core.config_forms", "uhd_core.config_checks",
                "uhd_core.presets", "uhd_core.checkpoint")),
    ("layers", ("uhd_core.layers", "uhd_core.anchors")),
    ("heads", ("uhd_core.heads",)),
    ("models", ("uhd_core.models",)),
    ("data", ("uhd_core.data", "uhd_core.augment", "uhd_core.metrics")),
    ("inference", ("uhd_core.inference", "uhd_core.evaluation", "uhd_core.predict", "uhd_core.export",
                   "uhd_core.distill")),
    ("engine", ("uhd_core.engine",)),
]

#: (importer, imported) -> why this arrow may run up. The imported module must itself import nothing
#: above the importer's floor except other exceptions of the same importer (checked below), so an
#: exception never drags a higher floor in.
EXCEPTIONS: dict[tuple[str, str], str] = {}

#: Packages no module of uhd_core may import at all (they sit above every floor).
ABOVE_ALL = ("uhd_cli", "bench", "tests")


def floor_of(module: str) -> int | None:
    """Index into FLOORS of the most specific name covering ``module``; None when none does."""
    best: tuple[int, int] | None = None  # (length of the matching name, floor)
    for index, (_, names) in enumerate(FLOORS):
        for name in names:
            covers = module == name if name == "uhd_core" else module == name or module.startswith(name + ".")
            if covers and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(module: str, tree: ast.AST, is_package: bool, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import in ``tree``; ``from pkg import sub`` names the
    submodule when ``pkg.sub`` is one of ``known``."""
    found: list[tuple[str, int]] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known]
            found += [(sub, node.lineno) for sub in subs] or [(target, node.lineno)]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str) and (
                    (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                    or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            found.append((node.args[0].value, node.lineno))
    return found


def violations(sources: dict[str, tuple[str, str, bool]], exceptions: dict[tuple[str, str], str]) -> list[str]:
    """``sources``: module -> (shown path, source text, is a package ``__init__``). One readable line
    per import that runs up a floor (or out of uhd_core to a front end), per unplaced module, per
    stale exception and per exception whose target imports above the importer's floor."""
    known = set(sources)
    edges = {module: imports_of(module, ast.parse(text, path), is_pkg, known)
             for module, (path, text, is_pkg) in sources.items()}
    problems: list[str] = []
    used: set[tuple[str, str]] = set()
    for module, found in sorted(edges.items()):
        path = sources[module][0]
        here = floor_of(module)
        if here is None:
            problems.append(f"{path}: {module} is on no floor; add it to FLOORS in tests/test_layering.py "
                            "and to the table in docs/DESIGN.md")
            continue
        for target, line in found:
            if target.split(".")[0] in ABOVE_ALL:
                problems.append(f"{path}:{line}: {module} imports {target}: uhd_core never imports the front ends")
                continue
            there = floor_of(target) if target.split(".")[0] == "uhd_core" else None
            if there is None or there <= here:
                continue
            if (module, target) in exceptions:
                used.add((module, target))
                problems += [f"{sources.get(target, (target,))[0]}:{tline}: {target} imports {sub} ({FLOORS[floor_of(sub)][0]}), "
                             f"above {FLOORS[here][0]}, so the exception {module} -> {target} no longer holds"
                             for sub, tline in edges.get(target, [])
                             if sub.split(".")[0] == "uhd_core" and (floor_of(sub) or 0) > here
                             and (module, sub) not in exceptions]
                continue
            problems.append(f"{path}:{line}: {module} ({FLOORS[here][0]}) imports {target} ({FLOORS[there][0]}), "
                            f"a floor above it; move the shared code down or the importer up (docs/DESIGN.md)")
    problems += [f"stale exception {a} -> {b}: that import is gone; remove it from EXCEPTIONS"
                 for a, b in sorted(set(exceptions) - used)]
    return problems


def _core_sources() -> dict[str, tuple[str, str, bool]]:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10, "the uhd_core tree was not found"
    return {module_name(p): (str(p.relative_to(REPO)), p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for p in files}


def test_no_import_runs_up_a_floor():
    problems = violations(_core_sources(), EXCEPTIONS)
    assert not problems, "imports that break the floors:\n" + "\n".join(problems)


def test_every_exception_says_why():
    for edge, reason in EXCEPTIONS.items():
        assert len(reason) > 40, f"{edge}: give the reason in a sentence"


def _fake(**modules: str) -> dict[str, tuple[str, str, bool]]:
    return {name.replace("__", "."): (name.replace("__", "/") + ".py", text, False) for name, text in modules.items()}


@pytest.mark.parametrize("text", [
    "from uhd_core.engine.trainer import Trainer\n",
    "import uhd_core.engine.trainer\n",
    "def f():\n    from uhd_core.engine import trainer\n",
    "def f():\n    importlib.import_module('uhd_core.engine.trainer')\n",
    "def f():\n    __import__('uhd_core.engine.trainer')\n",
    "from ..engine.trainer import Trainer\n",
])
def test_the_checker_sees_every_form_of_an_upward_import(text):
    sources = _fake(uhd_core__heads__toy=text, uhd_core__engine__trainer="")
    problems = violations(sources, {})
    assert len(problems) == 1, problems
    assert "uhd_core.heads.toy (heads) imports uhd_core.engine" in problems[0] and "(engine)" in problems[0]


def test_the_checker_allows_downward_and_same_floor_imports():
    sources = _fake(uhd_core__models__toy="from uhd_core.layers.blocks import ConvBNAct\n"
                                          "from uhd_core.heads.base import HEADS\nfrom uhd_core.models import cnn\n",
                    uhd_core__inference="from uhd_core.export.onnx_export import REEXPORT\n")
    assert violations(sources, {}) == []


def test_the_checker_flags_unplaced_modules_front_ends_and_stale_or_leaky_exceptions():
    sources = _fake(uhd_core__newthing="", uhd_core__data__x="import uhd_cli.console\n",
                    uhd_core__config="from uhd_core.data.labels import MAX\n",
                    uhd_core__data__labels="from uhd_core.models.detector import build_detector\n")
    problems = "\n".join(violations(sources, {("uhd_core.config", "uhd_core.data.labels"): "why",
                                              ("uhd_core.heads.a", "uhd_core.models.b"): "why"}))
    assert "uhd_core.newthing is on no floor" in problems
    assert "uhd_core.data.x imports uhd_cli.console: uhd_core never imports the front ends" in problems
    assert "the exception uhd_core.config -> uhd_core.data.labels no longer holds" in problems
    assert "stale exception uhd_core.heads.a -> uhd_core.models.b" in problems


def test_floors_are_the_ones_docs_design_describes():
    design = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    section = design.split("## Layering", 1)[-1].split("\n## ", 1)[0]
    assert "## Layering" in design, "docs/DESIGN.md has no Layering section"
    for floor, names in FLOORS:
        assert f"**{floor}**" in section, f"docs/DESIGN.md's Layering table lacks the floor {floor}"
        for name in names:
            shown = name.replace(".", "/") if name != "uhd_core" else "uhd_core/__init__"
            assert shown in section, f"docs/DESIGN.md's Layering table lacks {shown} (floor {floor})"
