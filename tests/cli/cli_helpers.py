"""Helpers shared by the CLI tests (pytest's rootdir-relative import puts tests/cli on sys.path)."""

from __future__ import annotations

#: Rich wraps and truncates help text to the terminal width; tests read it at 250 columns.
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}


def one_error_line(result) -> str:
    """The CLI's contract for bad input: exactly one non-empty line on stderr, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert "Traceback" not in result.output
    return lines[0]
