"""`uhd dashboard RUN_DIR`: the training dashboard over a run's events.jsonl, live or finished."""

from __future__ import annotations

from pathlib import Path

import typer

from uhd_cli.errors import fail, friendly_errors


@friendly_errors
def dashboard(
    run_dir: Path = typer.Argument(..., help="Run folder holding events.jsonl (runs/EXP_NAME)."),
) -> None:
    """Follow a run in the dashboard: live while another process trains, or a replay of a finished run."""
    events = run_dir / "events.jsonl"
    if not run_dir.is_dir():
        fail(f"{run_dir}: no such run folder")
    if not events.is_file():
        fail(f"{run_dir} holds no events.jsonl (is it a run folder of `uhd train`?)")
    from uhd_cli.dashboard import EventsFileSource, make_dashboard  # textual only for this command

    make_dashboard(EventsFileSource(events)).run()
