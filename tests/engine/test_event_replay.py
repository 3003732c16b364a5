"""events.jsonl lines parse back into the typed events, and events are dispatched one way: by type."""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from uhd_core.engine import events as ev

REPO = Path(__file__).resolve().parents[2]

#: One instance of every event class, with every field set away from its default.
SAMPLES = [
    ev.DataPrepared("data", 10, 8, 2, 1, 3, 1, True, ["a.txt:1: bad"]),
    ev.DecodeProgressed(3, 10),
    ev.RunStarted("runs/x", "x", "quickstart", "cnn", "centernet", 1234, [64, 64], "cpu", 8, 2, 3, 2, 4, 16,
                  ["loss", "hm"], "runs/x/last_0001.pt", 2, {"host": "h", "cores": 2}),
    ev.RunWarning("careful"),
    ev.WeightsLoaded("init.pt", False, 3, 5, ["a"], ["b"], ["c: (1,) vs (2,)"]),
    ev.StepEnded(1, 2, 4, 2, {"loss": 1.5, "hm": 1.0}, 0.01, 123.0),
    ev.EpochEnded(1, {"loss": 1.2}, 3.5, 99.0, 1, 3, 4),
    ev.EvalFinished(1, 0.25, {"0": 0.25}, 0.3, False, 1.0, "runs/x/0001"),
    ev.CheckpointSaved(1, "runs/x/last_0001.pt", "last"),
    ev.RunFinished("runs/x", 0.3, "b.pt", "l.pt", 3, 9.0, True, False),
    ev.RunFailed("boom", "Traceback ..."),
]


def test_every_event_class_has_a_sample():
    assert {type(s).__name__ for s in SAMPLES} == set(ev.event_types())


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).__name__)
def test_a_line_parses_back_into_the_event_it_was(event):
    line = json.loads(json.dumps({"time": 12.5, **event.to_dict()}))  # the events.jsonl format, unchanged
    assert line["event"] == type(event).__name__ and line["time"] == 12.5
    assert ev.event_from_dict(line) == event
    assert ev.stamped_from_dict(line) == ev.Stamped(12.5, event)


def test_lines_of_other_versions():
    started = {k: v for k, v in SAMPLES[2].to_dict().items() if k not in ("machine", "world_size")}
    old = ev.event_from_dict(started)  # written before machine facts and world_size existed
    assert old is not None and old.machine == {} and old.world_size == 1  # not this machine's facts
    assert ev.event_from_dict({**SAMPLES[3].to_dict(), "added_later": 1}) == SAMPLES[3]
    assert ev.event_from_dict({"event": "NoSuchEvent"}) is None
    assert ev.event_from_dict({"event": "StepEnded", "epoch": 1}) is None  # required fields missing
    assert ev.stamped_from_dict({**SAMPLES[3].to_dict(), "time": "noon"}) == ev.Stamped(None, SAMPLES[3])


def _string_dispatch(tree: ast.AST) -> list[int]:
    """Lines that dispatch on an event's name instead of its type: x["event"], x.get("event"), a
    comparison with an event class's name, getattr(obj, f"_on_{...}")."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "event":
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "event":
            lines.append(node.lineno)
        elif isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) and c.value in ev.event_types()
                                                   for c in [node.left, *node.comparators]):
            lines.append(node.lineno)  # kind == "EvalFinished"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr" \
                and len(node.args) > 1 and isinstance(node.args[1], ast.JoinedStr):
            lines.append(node.lineno)
    return lines


def test_events_are_dispatched_by_type_only():
    """The dashboard, console and log writers get typed events (a replay parses them back first);
    the one place that maps names to classes is uhd_core/engine/events.py."""
    allowed = {REPO / "uhd_core" / "engine" / "events.py"}
    offenders = []
    for top in ("uhd_cli", "uhd_core/engine"):
        for path in sorted((REPO / top).rglob("*.py")):
            if path not in allowed:
                offenders += [f"{path.relative_to(REPO)}:{line}"
                              for line in _string_dispatch(ast.parse(path.read_text(encoding="utf-8")))]
    zoo = REPO / "bench" / "zoo.py"
    progress = next(n for n in ast.walk(ast.parse(zoo.read_text(encoding="utf-8")))
                    if isinstance(n, ast.ClassDef) and n.name == "_Progress")
    offenders += [f"bench/zoo.py:{line}" for line in _string_dispatch(progress)]
    assert not offenders, "dispatch on the event's type (isinstance/match), not its name:\n" + "\n".join(offenders)


def test_dataclass_fields_are_json_safe_defaults():
    # a replay fills a missing field from its default: a factory must not depend on the replaying machine
    for name, cls in ev.event_types().items():
        for f in dataclasses.fields(cls):
            if f.default_factory is not dataclasses.MISSING and f.default_factory not in (list, dict):
                assert (name, f.name) == ("RunStarted", "machine"), f"{name}.{f.name}: handle it in event_from_dict"
