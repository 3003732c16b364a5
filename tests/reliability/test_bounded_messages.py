"""Issue 16, finding 5: no message of UHD is unbounded, and YAML alias bombs are refused before any work.

Before: a 411-byte alias-bomb `--aug-config` produced one error line of 2,147,479,553 bytes after
282 s (directly under `data_augment:` 312 MB). Now every quoted input is cut to QUOTE_LIMIT, every
error line to MESSAGE_LIMIT, and YAML whose alias expansion exceeds MAX_YAML_NODES is refused.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from uhd_core.errors import MESSAGE_LIMIT, QUOTE_LIMIT, bounded, first_line
from uhd_core.yaml_io import MAX_YAML_NODES, YamlRefused, expanded_node_count, load_yaml
from uhd_runner import assert_one_error_line, run_uhd


def _bomb_lines(levels: int = 9, fanout: int = 9) -> list[str]:
    """``levels`` anchors, each a list of ``fanout`` aliases of the one before: fanout**levels leaves."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * fanout)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fanout)}]" for i in range(1, levels)]
    return lines


BOMB = "\n".join(_bomb_lines()) + "\n"  # ~400 bytes, 9**9 = 387M leaves expanded


def test_the_bomb_is_small_on_disk_and_huge_expanded():
    assert len(BOMB) < 500
    import yaml  # control: plain safe_load builds it (a shared DAG) and its str() would be gigabytes

    data = yaml.safe_load("\n".join(_bomb_lines(levels=4)) + "\n")
    assert len(str(data["l3"])) > 9**3 * 5


def test_expanded_count_is_exact_on_small_documents():
    import yaml

    node = yaml.compose("a: &x [1, 2, 3]\nb: [*x, *x]\n", Loader=yaml.SafeLoader)
    # mapping 1 + key a 1 + list 4 + key b 1 + list (1 + 2 * 4) = 16
    assert expanded_node_count(node) == 16


def test_load_yaml_is_safe_load_for_ordinary_documents():
    text = "epochs: 3\nlist: &x [1, 2]\nagain: *x\nnested: {a: [1, {b: 2}]}\n"
    import yaml

    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml("") is None


def test_an_alias_bomb_is_refused_in_milliseconds():
    start = time.perf_counter()
    with pytest.raises(YamlRefused, match="alias bomb"):
        load_yaml(BOMB)
    assert time.perf_counter() - start < 5.0  # generous: it is linear in the 400 bytes
    # and a document just under the budget loads
    under = "a: &a [" + ", ".join(["1"] * 100) + "]\nb: [" + ", ".join(["*a"] * 100) + "]\n"
    assert expanded_node_count(__import__("yaml").compose(under, Loader=__import__("yaml").SafeLoader)) < MAX_YAML_NODES
    assert len(load_yaml(under)["b"]) == 100


def test_bounded_cuts_and_flattens():
    assert bounded("short") == "short"
    long = bounded("x" * 10_000)
    assert len(long) == QUOTE_LIMIT and long.endswith("...")
    assert "\n" not in bounded("a\nb\nc")
    assert len(bounded(list(range(10**6)))) < QUOTE_LIMIT
    assert len(first_line(ValueError("y" * 10**6))) <= QUOTE_LIMIT


@pytest.fixture
def tiny_data(tmp_path_factory) -> Path:
    from uhd_core.data.synth import write_synthetic_dataset

    out = tmp_path_factory.mktemp("bounded") / "images"
    write_synthetic_dataset(out, n=8, seed=0)
    return out


@pytest.mark.parametrize("layout", ["top_level", "under_data_augment"])
def test_train_refuses_an_alias_bomb_aug_config_in_one_short_line(layout, tiny_data, tmp_path, monkeypatch):
    lines = _bomb_lines()
    text = BOMB if layout == "top_level" else "data_augment:\n" + "".join(f"  {line}\n" for line in lines)
    aug = tmp_path / "bomb.yaml"
    aug.write_text(text)
    start = time.perf_counter()
    code, _, err = run_uhd(["train", "--image-dir", tiny_data, "--runs-dir", tmp_path / "runs", "--epochs", "1",
                            "--num-workers", "0", "--aug-config", aug], monkeypatch)
    assert code == 2
    line = assert_one_error_line(err, "alias bomb")
    assert "bomb.yaml" in line and len(line) <= MESSAGE_LIMIT + len("error: ")
    assert time.perf_counter() - start < 30.0
    assert not (tmp_path / "runs").exists()


def test_a_preset_alias_bomb_is_refused(tmp_path, monkeypatch):
    preset = tmp_path / "bomb.yaml"
    preset.write_text(BOMB.replace("l8:", "epochs:"))
    code, _, err = run_uhd(["train", "--preset", preset, "--runs-dir", tmp_path / "runs"], monkeypatch)
    assert code == 2
    assert_one_error_line(err, "alias bomb")


def test_unknown_preset_keys_are_quoted_short(tmp_path, monkeypatch):
    preset = tmp_path / "keys.yaml"
    preset.write_text("".join(f"{'k' * 1000}{i}: 1\n" for i in range(500)))  # PyYAML allows 1024-char keys
    code, _, err = run_uhd(["train", "--preset", preset, "--runs-dir", tmp_path / "runs"], monkeypatch)
    assert code == 2
    line = assert_one_error_line(err, "unknown key")
    assert len(line) < 3000


def test_the_cli_cuts_any_error_line(capsys):
    from uhd_cli.errors import fail

    with pytest.raises(SystemExit) as exc:
        fail("z" * 10_000_000)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: zzz") and err.rstrip().endswith("...")
    assert len(err) <= MESSAGE_LIMIT + len("error: \n")
