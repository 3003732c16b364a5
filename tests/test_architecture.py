"""House rules from docs/DESIGN.md that a reviewer would otherwise have to remember.

- uhd_core never imports typer, rich or textual (checked in the source and in a fresh interpreter);
- no print() in uhd_core (it emits events; front ends decide what to show);
- every package folder is listed in pyproject.toml, and presets are found through uhd_core.config.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import uhd_core
from uhd_core.config import available_presets

REPO = Path(__file__).resolve().parent.parent
CORE = REPO / "uhd_core"
UI_PACKAGES = {"typer", "rich", "textual", "click"}


def _core_sources() -> list[Path]:
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 10, "the uhd_core tree was not found"
    return files


def _imported_top_levels(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                names.add(node.args[0].value.split(".")[0])
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value.split(".")[0])
    return names


def test_the_scanner_sees_imports_of_every_form():
    tree = ast.parse(
        "import rich.console\nfrom typer import Typer\n"
        "def f():\n    import textual\n    __import__('click')\n    importlib.import_module('rich.table')\n"
    )
    assert _imported_top_levels(tree) >= {"rich", "typer", "textual", "click"}


def test_uhd_core_source_never_imports_ui_packages():
    offenders = []
    for path in _core_sources():
        used = _imported_top_levels(ast.parse(path.read_text(encoding="utf-8"), str(path))) & UI_PACKAGES
        if used:
            offenders.append(f"{path.relative_to(REPO)}: {sorted(used)}")
    assert not offenders, "uhd_core must not import UI packages:\n" + "\n".join(offenders)


def _core_module_names() -> list[str]:
    names = []
    for path in _core_sources():
        rel = path.relative_to(REPO).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def test_importing_all_of_uhd_core_loads_no_ui_package():
    modules = _core_module_names()
    assert "uhd_core.engine.api" in modules and "uhd_core.engine.trainer" in modules
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(UI_PACKAGES)!r})\n"
        "assert not bad, bad\n"
        "print('ok', len(sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok")


def test_no_print_calls_in_uhd_core():
    offenders = []
    for path in _core_sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, "uhd_core emits events instead of printing:\n" + "\n".join(offenders)


def _unsafe_loads(tree: ast.AST) -> list[int]:
    """Lines that could run code from a file: yaml.load/full_load/unsafe_load, torch.load without
    weights_only=True, pickle.load(s)."""
    lines = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        module, name = node.func.value.id, node.func.attr
        weights_only = {k.arg: k.value for k in node.keywords}.get("weights_only")
        if ((module == "yaml" and name in ("load", "full_load", "unsafe_load", "load_all"))
                or (module == "pickle" and name in ("load", "loads"))
                or (module == "torch" and name == "load"
                    and not (isinstance(weights_only, ast.Constant) and weights_only.value is True))):
            lines.append(node.lineno)
    return lines


def test_the_unsafe_load_scanner_finds_each_form():
    code = "yaml.load(f)\ntorch.load(p)\ntorch.load(p, weights_only=False)\npickle.loads(b)\n" \
           "yaml.safe_load(f)\ntorch.load(p, weights_only=True)\n"
    assert _unsafe_loads(ast.parse(code)) == [1, 2, 3, 4]


def test_no_file_is_ever_loaded_unsafely():
    """Checkpoints with weights_only=True, YAML with safe_load (docs/RELIABILITY.md section 1)."""
    offenders = []
    for path in _core_sources() + sorted((REPO / "uhd_cli").rglob("*.py")):
        offenders += [f"{path.relative_to(REPO)}:{line}"
                      for line in _unsafe_loads(ast.parse(path.read_text(encoding="utf-8"), str(path)))]
    assert not offenders, "unsafe loads:\n" + "\n".join(offenders)


# ------------------------------------------------------------------------------------------------
# packaging

def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _package_folders(top: str) -> set[str]:
    root = REPO / top
    return {
        ".".join(init.parent.relative_to(REPO).parts)
        for init in root.rglob("__init__.py")
        if "__pycache__" not in init.parts
    }


@pytest.mark.parametrize("top", ["uhd_core", "uhd_cli"])
def test_every_package_folder_is_listed_in_pyproject(top):
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = _package_folders(top)
    assert top in folders
    missing = sorted(folders - listed)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"


def test_listed_packages_exist():
    setuptools_cfg = _pyproject()["tool"]["setuptools"]
    package_dir = setuptools_cfg.get("package-dir", {})
    for name in setuptools_cfg["packages"]:
        folder = REPO / package_dir.get(name, name.replace(".", "/"))
        assert folder.is_dir(), f"{name} is listed but {folder} does not exist"


def test_presets_ship_with_the_package_and_are_all_found():
    cfg = _pyproject()["tool"]["setuptools"]
    assert cfg["package-dir"]["uhd_core.presets"] == "presets"
    assert "*.yaml" in cfg["package-data"]["uhd_core.presets"]
    on_disk = sorted(p.stem for p in (REPO / "presets").glob("*.yaml"))
    assert on_disk, "presets/ holds no YAML"
    assert set(on_disk) <= set(available_presets())


def test_uhd_core_is_imported_from_this_checkout():
    # Otherwise every test above checks files that are not the ones being imported.
    assert Path(uhd_core.__file__).resolve().parent == CORE
