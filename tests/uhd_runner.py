"""`uhd ARGS` run in-process exactly as the installed script runs it, for tests in any folder
(tests/ is on sys.path: pytest puts the rootdir conftest's folder there first)."""

from __future__ import annotations

import sys
import traceback

import pytest
from typer.testing import CliRunner

#: Rich wraps and truncates text to the terminal width; tests read it at 250 columns.
WIDE = {"COLUMNS": "250", "TERMINAL_WIDTH": "250", "NO_COLOR": "1"}


def run_uhd(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """`uhd ARGS` through `uhd_cli.main:main`: (exit code, stdout, stderr).

    An exception that escapes main() is printed the way the interpreter would (a traceback on
    stderr, exit 1), so a test cannot pass by crashing.
    """
    from uhd_cli.main import main

    monkeypatch.setattr(sys, "argv", ["uhd", *[str(a) for a in args]])
    with CliRunner(env=WIDE).isolation() as (out, err, _):
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - render it as Python would
            traceback.print_exc(file=sys.stderr)
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        return code, out.getvalue().decode(errors="replace"), err.getvalue().decode(errors="replace")


def assert_one_error_line(stderr: str, expect: str = "") -> str:
    """The CLI's bad-input contract: exactly one non-empty stderr line, `error: ...`, containing ``expect``."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr[-3000:]}"
    assert lines[0].startswith("error: "), lines[0][:500]
    assert expect in lines[0], f"{expect!r} not in {lines[0][:500]!r}"
    return lines[0]
