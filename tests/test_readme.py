"""The README's flag table is the CLI's flag list (both derive from RunConfig)."""

import re
from pathlib import Path

from uhd_core.config import RunConfig, flag_name

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_flag_table_lists_exactly_the_cli_flags():
    documented = set(re.findall(r"^\| `(--[a-z0-9-]+)` \|", README.read_text(encoding="utf-8"), flags=re.M))
    expected = {
        flag_name(name)  # a field may name its flag (extra_train_dirs: --extra-train-dir)
        for name, field in RunConfig.model_fields.items()
        if (field.json_schema_extra or {}).get("cli", True)
    }
    assert documented == expected


def test_readme_flag_table_shows_the_cli_defaults():
    from uhd_cli.commands.train import _default_text

    rows = dict(re.findall(r"^\| `(--[a-z0-9-]+)` \| `([^`]*)` \|", README.read_text(encoding="utf-8"), flags=re.M))
    for name, field in RunConfig.model_fields.items():
        flag = flag_name(name)
        if flag in rows:
            assert rows[flag] == _default_text(name, field.default), flag


def test_readme_flag_table_is_the_generated_one():
    """Descriptions too: `make readme-flags` rewrites the table from RunConfig."""
    from uhd_cli.commands.train import flag_table_markdown

    assert flag_table_markdown() in README.read_text(encoding="utf-8")


def test_readme_shows_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
