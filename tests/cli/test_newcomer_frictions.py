"""Issue 16, finding 13: frictions a newcomer meets in help, piped progress, install, aug-preview and the
dashboard replay (the 80x24 dashboard layout is tested in test_dashboard.py)."""

from __future__ import annotations

import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
import typer
from uhd_runner import run_uhd

from uhd_cli.main import app


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command of the click tree under ``command``, as argv prefixes (the root is ()).

    Duck-typed on ``.commands``: typer 0.29 builds its groups on its own vendored click.
    """
    paths = [path]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*path, name))
    return paths


COMMANDS = _command_paths(typer.main.get_command(app))


def test_the_command_tree_is_walked():
    assert {("train",), ("export",), ("dataset",), ("dataset", "synth")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "uhd")
def test_help_has_no_bool_metavar_and_no_parenthesised_placeholder_default(path, monkeypatch):
    code, out, err = run_uhd([*path, "--help"], monkeypatch)
    assert code == 0, err
    assert "Usage:" in out
    assert "<bool>" not in out  # flags take no value
    assert "(default)" not in out and "[default: (" not in out  # a default is the value, not "(text)"


def test_train_help_still_shows_the_generated_defaults(monkeypatch):
    code, out, _ = run_uhd(["train", "--help"], monkeypatch)
    assert code == 0
    assert "[default: runs]" in out and "[default: 64x64]" in out


# -- packaging ------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_license_is_an_spdx_string_that_setuptools_reads_without_a_deprecation():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["license"] == "Apache-2.0"
    # the string form needs setuptools >= 77; older ones would reject the install
    assert "setuptools>=77" in project["build-system"]["requires"]
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(setuptools.Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message)]  # the box printed three times per install
    assert dist.metadata.license_expression == "Apache-2.0"
