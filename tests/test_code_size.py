"""Size rules of uhd_core (issue 17): every function under 80 lines, no module over 400 lines.

A long function or module is where architecture facts and special cases pile up; the rule keeps
each one readable in one screen. Measured with ``ast`` on the source files:

- a function's (or method's, nested ones included) lines run from its first decorator or its
  ``def`` to its last line, docstring and comments included;
- a module's lines are the lines of its file.

Exceptions are named here with the reason; an exception that is no longer needed fails too, so
the lists only shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "uhd_core"

#: A function may have at most this many lines ("under 80").
MAX_FUNCTION_LINES = 79
#: A module may have at most this many lines.
MAX_MODULE_LINES = 400

#: {"uhd_core/path.py::Qualified.name": reason} for functions allowed over MAX_FUNCTION_LINES.
FUNCTION_ALLOWLIST: dict[str, str] = {}
#: {"uhd_core/path.py": reason} for modules allowed over MAX_MODULE_LINES.
MODULE_ALLOWLIST: dict[str, str] = {}


def function_sizes(source: str) -> dict[str, int]:
    """{qualified name: lines} of every function and method in ``source``, nested ones included
    (``Outer.method.inner``); a name defined twice in one scope keeps its longest definition."""
    sizes: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                sizes[name] = max(sizes.get(name, 0), child.end_lineno - first + 1)
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sizes


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _measure() -> tuple[dict[str, int], dict[str, int]]:
    """({"path::name": lines} for every function, {"path": lines} for every module) of uhd_core."""
    functions: dict[str, int] = {}
    modules: dict[str, int] = {}
    for path in _modules():
        source = path.read_text(encoding="utf-8")
        modules[_rel(path)] = len(source.splitlines())
        for name, lines in function_sizes(source).items():
            functions[f"{_rel(path)}::{name}"] = lines
    return functions, modules


def test_measure_finds_long_functions_and_methods() -> None:
    """The measuring itself: decorators count, methods and nested functions are found by name."""
    body = "".join(f"    x{i} = {i}\n" for i in range(79))
    source = (
        f"@decorator\ndef long():\n{body}\n"
        f"class C:\n    def short(self):\n        pass\n\n    def outer(self):\n        def inner():\n"
        + "".join("    " * 2 + line for line in body.splitlines(keepends=True))
    )
    sizes = function_sizes(source)
    assert sizes["long"] == 81  # decorator + def + 79 body lines
    assert sizes["C.short"] == 2
    assert sizes["C.outer.inner"] == 80
    assert sizes["C.outer"] == 81


def test_functions_are_under_80_lines() -> None:
    functions, _ = _measure()
    too_long = {name: lines for name, lines in functions.items()
                if lines > MAX_FUNCTION_LINES and name not in FUNCTION_ALLOWLIST}
    assert not too_long, (f"functions over {MAX_FUNCTION_LINES} lines (split them by step, or add them to "
                          f"FUNCTION_ALLOWLIST with a reason): {too_long}")


def test_modules_are_at_most_400_lines() -> None:
    _, modules = _measure()
    too_long = {path: lines for path, lines in modules.items()
                if lines > MAX_MODULE_LINES and path not in MODULE_ALLOWLIST}
    assert not too_long, (f"modules over {MAX_MODULE_LINES} lines (split them by responsibility, or add them to "
                          f"MODULE_ALLOWLIST with a reason): {too_long}")


@pytest.mark.parametrize(("allowlist", "limit", "kind"), [
    (FUNCTION_ALLOWLIST, MAX_FUNCTION_LINES, "function"),
    (MODULE_ALLOWLIST, MAX_MODULE_LINES, "module"),
])
def test_allowlists_hold_only_what_is_still_over(allowlist: dict[str, str], limit: int, kind: str) -> None:
    functions, modules = _measure()
    sizes = functions if kind == "function" else modules
    stale = {name: sizes.get(name) for name in allowlist if sizes.get(name, 0) <= limit}
    assert not stale, f"{kind} allowlist entries no longer over {limit} lines (or gone): remove them: {stale}"
    assert all(reason.strip() for reason in allowlist.values()), f"every {kind} exception needs a reason"
