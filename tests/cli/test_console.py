"""Terminal rendering of events that carry tables (the --ckpt report)."""

from __future__ import annotations

import io

from rich.console import Console

from uhd_cli.console import PlainLinePrinter, RichProgressRenderer
from uhd_core.engine.events import WeightsLoaded

REPORT = WeightsLoaded("runs/a/best.pt", strict=False, loaded=160, total=190,
                       missing=["backbone.encoder.3.norm1.weight", "backbone.decoder.3.ffn.0.bias"],
                       unexpected=["old.head.weight"], mismatched=["head.class_embed.weight: checkpoint (3, 64) vs model (2, 64)"])


def test_rich_renderer_prints_a_table_with_every_category():
    out = io.StringIO()
    RichProgressRenderer(Console(file=out, width=200, color_system=None))(REPORT)
    text = out.getvalue()
    assert "160/190" in text
    for name in (*REPORT.missing, *REPORT.unexpected, REPORT.mismatched[0]):
        assert name in text
    assert "missing (start fresh)" in text and "unexpected (ignored)" in text


def test_plain_printer_lists_the_keys_one_per_line():
    out = io.StringIO()
    PlainLinePrinter(out)(REPORT)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("initialised from runs/a/best.pt: 160/190 tensors loaded, 2 missing, 1 unexpected")
    assert "  missing (fresh): backbone.encoder.3.norm1.weight" in lines
