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


# -- aug-preview captions -----------------------------------------------------------------------------

def test_caption_leaves_out_a_box_filter_that_dropped_nothing():
    from uhd_core.augment.pipeline import OpTrace
    from uhd_core.augment.preview import caption

    flip, kept, dropped = OpTrace("HorizontalFlip", 0.0, 2, 2), OpTrace("RemoveOutliers", 0.0, 2, 2), \
        OpTrace("RemoveOutliers", 0.0, 3, 1)
    assert caption([flip, kept]) == "HorizontalFlip"
    assert caption([kept]) == "(no op fired)"
    assert caption([flip, dropped]) == "HorizontalFlip, RemoveOutliers -2 boxes"


def test_preview_tiles_are_not_all_captioned_remove_outliers(monkeypatch):
    import uhd_core.augment.preview as preview
    from uhd_core.augment.pipeline import AugmentPipeline
    from uhd_core.augment.spec import parse_augment_specs

    captions: list[str] = []
    render = preview.render_tile
    monkeypatch.setattr(preview, "render_tile", lambda image, boxes, text, scale: (captions.append(text),
                                                                                  render(image, boxes, text, scale))[1])
    pipeline = AugmentPipeline(parse_augment_specs({"data_augment": {"HorizontalFlip": 0.5,
                                                                     "RemoveOutliers": 1.0e-8}}))
    preview.make_preview(pipeline, preview.synthetic_samples((64, 64), 2, seed=0), variants=4, scale=1)
    augmented = [c for c in captions if c != "original"]
    assert len(augmented) == 8
    assert not any("RemoveOutliers" in c for c in augmented)  # it fired on every tile and dropped nothing
    assert "HorizontalFlip" in augmented and "(no op fired)" in augmented
