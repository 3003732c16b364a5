"""The training dashboard on synthetic events: the reducer, the file tail, pilot tests and SVG snapshots.

Events are built from the real event dataclasses and written as events.jsonl lines, so these tests
break when the events change shape. Clock and machine stats are fixed, so snapshots are stable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from textual.widgets import RichLog, Static

from uhd_cli.dashboard import DashboardState, EventsFileSource, make_dashboard
from uhd_cli.dashboard.app import ConfirmStop
from uhd_cli.dashboard.system import GIB, SystemMonitor, SystemStats
from uhd_core.engine.events import (
    CheckpointSaved,
    DataPrepared,
    EvalFinished,
    Event,
    RunFailed,
    RunFinished,
    RunStarted,
    Stamped,
    StepEnded,
    machine_facts,
)

SIZE = (120, 40)
T0 = 1_700_000_000.0
NOW = T0 + 95.0  # the injected clock: 95 s after the run started
HEAD_TERMS = {
    "centernet": ("cnn", ["hm", "off", "wh"]),
    "anchor": ("cnn", ["obj", "cls", "box"]),
    "detr": ("transformer", ["cls", "l1", "iou"]),
}
STEPS = 10
BATCH = 16
#: RunStarted.machine of the synthetic runs: another host than the one running the tests.
MACHINE = {"host": "trainbox", "cpu": "AMD EPYC 7B13", "cores": 8, "ram_bytes": 32 * 1024**3, "threads": 8,
           "gpu": ""}


def fixed_stats(device: str) -> SystemStats:
    return SystemStats(37.0, 3 * GIB, 8 * GIB, "CPU only" if device else "")


def run_events(head: str = "centernet", *, distill: bool = False, epochs_done: int = 2, epochs: int = 3,
               end: str = "", machine: dict[str, Any] | None = None) -> list[Event]:
    """A run of ``epochs`` epochs of STEPS steps, cut after ``epochs_done``; ``end``: "", "finished" or "failed"."""
    arch, terms = HEAD_TERMS[head]
    distill_terms = ["distill_kl", "distill_box_l1"] if distill else []
    run_dir = "runs/demo"
    events: list[Event] = [
        DataPrepared(image_dir="data/synth", num_images=600, num_train=540, num_val=60, num_without_targets=31,
                     num_label_issues=0, num_decode_failures=0, from_cache=False),
        RunStarted(run_dir=run_dir, exp_name="demo", preset="quickstart", arch=arch, head=head, params=123_456,
                   img_size=[64, 64], device="cpu", num_train=540, num_val=60, epochs=epochs, start_epoch=1,
                   steps_per_epoch=STEPS, batch_size=BATCH, loss_terms=["loss", *terms, *distill_terms],
                   machine=MACHINE if machine is None else machine),
    ]
    maps = [0.21, 0.34, 0.29, 0.4]
    for epoch in range(1, epochs_done + 1):
        for step in range(1, STEPS + 1):
            g = (epoch - 1) * STEPS + step
            losses = {name: round(1.0 / (g ** 0.5) * (1 + i / 4), 4) for i, name in enumerate(terms + distill_terms)}
            events.append(StepEnded(epoch=epoch, step=step, steps_per_epoch=STEPS, global_step=g,
                                    losses={"loss": round(sum(losses.values()), 4), **losses},
                                    lr=4e-3 * (1 - g / 40), imgs_per_s=320.0))
        best = max(maps[:epoch])
        is_best = maps[epoch - 1] == best
        if is_best:
            events.append(CheckpointSaved(epoch, f"{run_dir}/best_{arch}_{epoch:04d}_map_{best:.5f}.pt", "best"))
        events.append(EvalFinished(epoch, maps[epoch - 1], {"0": maps[epoch - 1]}, best, is_best, 1.5,
                                   f"{run_dir}/{epoch:04d}" if is_best else ""))
        events.append(CheckpointSaved(epoch, f"{run_dir}/last_{epoch:04d}.pt", "last"))
    if end == "finished":
        events.append(RunFinished(run_dir, max(maps[:epochs_done]), f"{run_dir}/best_{arch}_0002_map_0.34000.pt",
                                  f"{run_dir}/last_{epochs_done:04d}.pt", epochs_done, 90.0))
    elif end == "failed":
        events.append(RunFailed("FloatingPointError: loss became nan at epoch 3 step 4; lower --lr",
                                "Traceback (most recent call last):\n  ...\nFloatingPointError: loss became nan"))
    return events


def as_dicts(events: list[Event]) -> list[dict[str, Any]]:
    """events.jsonl lines: one second apart from T0."""
    return [{"time": T0 + i, **event.to_dict()} for i, event in enumerate(events)]


def stamped(events: list[Event]) -> list[Stamped]:
    """What a source hands the dashboard: the events with the times of as_dicts."""
    return [Stamped(T0 + i, event) for i, event in enumerate(events)]


def write_events(path: Path, events: list[Event]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in as_dicts(events)), encoding="utf-8")
    return path


class FakeLiveSource:
    """A live run's controls without a trainer: records stop/save and hands out the given events once."""

    controls_training = True
    description = "runs/demo"

    def __init__(self, events: list[Event]) -> None:
        self.pending = stamped(events)
        self.stops = 0
        self.saves = 0

    def start(self) -> None:
        pass

    def poll(self) -> list[Stamped]:
        events, self.pending = self.pending, []
        return events

    def stop(self) -> None:
        self.stops += 1

    def save(self) -> None:
        self.saves += 1


def dashboard(source, **kwargs):
    return make_dashboard(source, clock=lambda: NOW, system_stats=fixed_stats, **kwargs)


def text(app, selector: str) -> str:
    return app.query_one(selector, Static).render().plain


def drive(app, script) -> None:
    """Run ``script(pilot)`` against the app headless at SIZE."""
    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            await script(pilot)

    asyncio.run(main())


# -- the reducer, without Textual -------------------------------------------------------------------

def test_state_reduces_a_run_to_what_the_panels_show():
    state = DashboardState()
    for item in stamped(run_events("centernet", end="finished")):
        state.apply(item.event, item.time)
    assert (state.exp_name, state.arch, state.head, state.params, state.img_size) == ("demo", "cnn", "centernet",
                                                                                        123_456, (64, 64))
    assert state.loss_terms == ["loss", "hm", "off", "wh"]
    assert len(state.history["hm"]) == 2 * STEPS and state.losses["hm"] == state.history["hm"][-1]
    assert [row.epoch for row in state.evals] == [1, 2] and (state.best_epoch, state.best_map50) == (2, 0.34)
    assert state.latest_checkpoint == "runs/demo/last_0002.pt"
    assert state.best_checkpoint == "runs/demo/best_cnn_0002_map_0.34000.pt"
    assert state.render_dir == "runs/demo/0002"
    assert state.finished and not state.error and state.eta_seconds() is None


def test_eta_comes_from_img_per_s_and_the_steps_left():
    state = DashboardState()
    for item in stamped(run_events(epochs_done=1, epochs=3)):
        state.apply(item.event, item.time)
    # epoch 1 done, 2 more epochs of STEPS steps at 320 img/s, BATCH images a step
    assert state.steps_remaining() == 2 * STEPS
    assert state.eta_seconds() == pytest.approx(2 * STEPS * BATCH / 320.0)
    assert state.epoch_progress() == 1.0
    started = as_dicts(run_events())[1]["time"]
    assert state.elapsed_seconds(started + 42.0) == 42.0


def test_a_failed_run_keeps_its_error():
    state = DashboardState()
    for item in stamped(run_events(end="failed")):
        state.apply(item.event, item.time)
    assert state.ended and not state.finished
    assert state.error.startswith("FloatingPointError") and "Traceback" in state.traceback


# -- machine stats ------------------------------------------------------------------------------------

class FakeNvml:
    """pynvml's calls the monitor makes, with one 80 GiB GPU at 87% per NVML index."""

    def __init__(self) -> None:
        self.indices: list[int] = []

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self.indices.append(index)
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(gpu=87)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(used=3 * GIB, total=80 * GIB)


def test_gpu_line_follows_the_device_through_nvml(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monitor = SystemMonitor()
    assert monitor("cpu").gpu == "CPU only"
    assert monitor("").gpu == ""
    stats = monitor("cuda:1")
    assert stats.gpu == "GPU 87% · 3.0/80.0 GiB" and nvml.indices == [3]
    assert 0 < stats.ram_used <= stats.ram_total


def test_gpu_line_without_nvidia_ml_py_says_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml raises ImportError
    assert SystemMonitor()("cuda").gpu == "GPU stats unavailable"


# -- following events.jsonl ------------------------------------------------------------------------

def test_file_source_reads_appended_lines_and_waits_for_a_torn_last_line(tmp_path):
    lines = [json.dumps(d) for d in as_dicts(run_events(epochs_done=1))]
    path = tmp_path / "events.jsonl"
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:15], encoding="utf-8")
    source = EventsFileSource(path)
    assert [type(s.event).__name__ for s in source.poll()] == ["DataPrepared", "RunStarted"]
    assert source.poll() == []
    with path.open("a", encoding="utf-8") as fh:
        fh.write(lines[2][15:] + "\n" + "{not json\n" + lines[3] + "\n")
    assert [s.event.global_step for s in source.poll()] == [1, 2]


def test_a_replay_hands_over_the_typed_events_that_were_written(tmp_path):
    events = run_events("anchor", end="finished")
    got = EventsFileSource(write_events(tmp_path / "events.jsonl", events)).poll()
    assert got == stamped(events)  # the same Event objects (frozen dataclasses compare by value), same times


def test_file_source_of_a_missing_file_has_no_events(tmp_path):
    assert EventsFileSource(tmp_path / "events.jsonl").poll() == []


# -- pilot tests ---------------------------------------------------------------------------------------

def test_replay_shows_header_progress_evals_files_and_finished(tmp_path):
    app = dashboard(EventsFileSource(write_events(tmp_path / "events.jsonl", run_events(end="finished"))))

    async def check(pilot) -> None:
        header = text(app, "#header")
        for expected in ("demo", "preset quickstart", "cnn/centernet", "123,456 params", "input 64x64", "device cpu",
                         "540 train / 60 val", "batch 16", "run dir runs/demo"):
            assert expected in header
        assert text(app, "#epoch-label") == "epoch 2/3" and text(app, "#step-label") == "step 10/10"
        assert "320 img/s" in text(app, "#speed") and "lr 2.00e-03" in text(app, "#speed")
        evals = text(app, "#evals").splitlines()
        assert evals[0] == "best 0.34000 (epoch 2)"
        assert [line for line in evals if line.endswith("best")] == ["epoch    2  0.34000  best"]
        files = text(app, "#files")
        assert "latest checkpoint  runs/demo/last_0002.pt" in files and "sample renders     runs/demo/0002" in files
        # a replay shows the run's machine, not this one's load
        assert text(app, "#system") == ("trainbox · 8 cores · 32.0 GiB RAM\nAMD EPYC 7B13\nCPU only\n"
                                        "replay: no live load shown")
        assert text(app, "#status").startswith("finished after 0:00:27")  # RunFinished is 27 lines (s) after RunStarted
        assert "best mAP@0.5 0.34000" in text(app, "#status")
        await pilot.press("x")  # any key closes a finished run
        assert not app.is_running

    drive(app, check)


@pytest.mark.parametrize(("head", "distill"), [("centernet", False), ("anchor", False), ("detr", False),
                                               ("detr", True)])
def test_loss_panel_shows_the_terms_of_the_head_in_use(tmp_path, head, distill):
    app = dashboard(EventsFileSource(write_events(tmp_path / "events.jsonl", run_events(head, distill=distill))))
    expected = ["loss", *HEAD_TERMS[head][1], *(["distill_kl", "distill_box_l1"] if distill else [])]

    async def check(pilot) -> None:
        assert list(app.loss_rows) == expected
        assert len(app.query(".loss-row")) == len(expected)
        last = app.state.losses
        for term in expected:
            assert app.loss_rows[term].value.render().plain == f"{term}\n{last[term]:.4f}"
            assert list(app.loss_rows[term].plot.data) == list(app.state.history[term])

    drive(app, check)


@pytest.mark.parametrize(("answer", "stops"), [("y", 1), ("n", 0)])
def test_q_asks_before_stopping_a_live_run(answer, stops):
    source = FakeLiveSource(run_events())
    app = dashboard(source)

    async def check(pilot) -> None:
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmStop) and source.stops == 0
        await pilot.press(answer)
        assert not isinstance(app.screen, ConfirmStop)
        assert source.stops == stops
        assert text(app, "#status").startswith("stopping") == bool(stops)
        assert app.is_running

    drive(app, check)


def test_s_asks_the_live_run_for_a_checkpoint():
    source = FakeLiveSource(run_events())
    app = dashboard(source)

    async def check(pilot) -> None:
        await pilot.press("s")
        assert source.saves == 1 and source.stops == 0

    drive(app, check)


def test_l_toggles_the_log_pane_of_plain_lines(tmp_path):
    app = dashboard(EventsFileSource(write_events(tmp_path / "events.jsonl", run_events(epochs_done=1))))

    async def check(pilot) -> None:
        log = app.query_one("#log", RichLog)
        assert not log.display
        await pilot.press("l")
        assert log.display
        lines = [strip.text for strip in log.lines]
        assert any(line.startswith("epoch 1 step 10/10 loss=") for line in lines)
        assert any(line.startswith("eval epoch 1: mAP@0.5 0.21000") for line in lines)
        await pilot.press("l")
        assert not log.display

    drive(app, check)


def test_a_failed_run_shows_its_error_and_traceback(tmp_path):
    app = dashboard(EventsFileSource(write_events(tmp_path / "events.jsonl", run_events(end="failed"))))

    async def check(pilot) -> None:
        status = text(app, "#status")
        assert status.startswith("FAILED: FloatingPointError: loss became nan at epoch 3 step 4")
        assert app.query_one("#status").has_class("failed")
        await pilot.press("l")  # the log pane renders its lines once shown
        assert any("Traceback" in strip.text for strip in app.query_one("#log", RichLog).lines)

    drive(app, check)


def test_following_a_file_says_the_keys_do_not_control_it_and_q_just_closes(tmp_path):
    path = write_events(tmp_path / "events.jsonl", run_events(epochs_done=1))
    app = dashboard(EventsFileSource(path))

    async def check(pilot) -> None:
        assert "q and s do not control that process" in text(app, "#keys")
        await pilot.press("q")
        assert not isinstance(app.screen, ConfirmStop)
        assert not app.is_running

    drive(app, check)


def test_following_a_file_picks_up_lines_another_process_appends(tmp_path):
    events = run_events(epochs_done=2, end="finished")
    lines = [json.dumps(d) + "\n" for d in as_dicts(events)]
    path = tmp_path / "events.jsonl"
    cut = len(lines) - 5
    path.write_text("".join(lines[:cut]), encoding="utf-8")
    app = dashboard(EventsFileSource(path), poll_interval=0.02)

    async def check(pilot) -> None:
        assert text(app, "#status") == "training" and len(app.state.evals) == 1
        with path.open("a", encoding="utf-8") as fh:
            fh.write("".join(lines[cut:]))
        deadline = time.monotonic() + 10
        while not app.state.ended and time.monotonic() < deadline:  # the poll timer picks the lines up
            await pilot.pause(0.02)
        assert len(app.state.evals) == 2
        assert text(app, "#status").startswith("finished")

    drive(app, check)


# -- snapshots (tests/cli/__snapshots__/test_dashboard/*.svg; refresh with --snapshot-update) -------

@pytest.fixture
def snap_compare(snap_compare, monkeypatch):
    """The plugin's fixture, with colours on: Textual renders monochrome when NO_COLOR is set."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    return snap_compare


def test_snapshot_live_anchor_run(snap_compare):
    assert snap_compare(dashboard(FakeLiveSource(run_events("anchor"))), terminal_size=SIZE)


def test_snapshot_stop_confirmation(snap_compare):
    assert snap_compare(dashboard(FakeLiveSource(run_events("centernet"))), press=["q"], terminal_size=SIZE)


def test_snapshot_finished_distilled_transformer_with_log(tmp_path, snap_compare):
    path = write_events(tmp_path / "events.jsonl", run_events("detr", distill=True, epochs_done=3, end="finished"))
    assert snap_compare(dashboard(EventsFileSource(path)), press=["l"], terminal_size=SIZE)


def test_snapshot_failed_run(tmp_path, snap_compare):
    path = write_events(tmp_path / "events.jsonl", run_events("centernet", end="failed"))
    assert snap_compare(dashboard(EventsFileSource(path)), terminal_size=SIZE)


# -- an 80x24 terminal (issue 16, finding 13) -------------------------------------------------------------

SMALL = (80, 24)


def screen_lines(app) -> list[str]:
    """What the terminal shows, one string per row (Textual's compositor renders the visible screen)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def assert_on_screen(app, widget) -> None:
    """``widget`` is laid out inside the screen and not scrolled out of its container."""
    screen, region = app.screen.region, widget.region
    assert region.height > 0 and region.width > 0, f"{widget} has no visible area"
    assert screen.contains_region(region), f"{widget} at {region} lies outside the screen {screen}"
    assert widget.parent.region.contains_region(region), f"{widget} at {region} is scrolled out of its panel"


def assert_every_loss_term_and_key_visible(app, terms: list[str], keys: list[str]) -> None:
    lines = screen_lines(app)
    assert list(app.loss_rows) == terms
    for term in terms:
        row = app.loss_rows[term]
        assert_on_screen(app, row)
        value = f"{app.state.losses[term]:.4f}"
        # the row's screen lines carry its term and its latest value
        shown = " ".join(lines[row.region.y:row.region.bottom])
        assert term in shown and value in shown, (term, value, shown)
    footer = app.query_one("#keys", Static)
    assert_on_screen(app, footer)
    for key in keys:
        assert key in lines[footer.region.y], (key, lines[footer.region.y])


HEADS = [("centernet", False), ("anchor", False), ("detr", False), ("detr", True)]


@pytest.mark.parametrize("log_open", [False, True], ids=["", "log-open"])
@pytest.mark.parametrize(("head", "distill"), HEADS)
def test_every_loss_term_and_the_footer_keys_fit_80x24_live(head, distill, log_open):
    app = dashboard(FakeLiveSource(run_events(head, distill=distill)))
    terms = ["loss", *HEAD_TERMS[head][1], *(["distill_kl", "distill_box_l1"] if distill else [])]

    async def main() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            if log_open:
                await pilot.press("l")
                await pilot.pause()
                assert_on_screen(app, app.query_one("#log", RichLog))
            assert_every_loss_term_and_key_visible(app, terms, ["q: stop", "s: save", "l: log", "ctrl+q: quit"])
            assert_on_screen(app, app.query_one("#status", Static))

    asyncio.run(main())


@pytest.mark.parametrize(("head", "distill"), HEADS)
def test_every_loss_term_and_the_footer_keys_fit_80x24_replay(tmp_path, head, distill):
    app = dashboard(EventsFileSource(write_events(tmp_path / "events.jsonl", run_events(head, distill=distill))))
    terms = ["loss", *HEAD_TERMS[head][1], *(["distill_kl", "distill_box_l1"] if distill else [])]

    async def main() -> None:
        async with app.run_test(size=SMALL) as pilot:
            await pilot.pause()
            assert_every_loss_term_and_key_visible(app, terms, ["q: close", "l: log"])
            assert any("epoch    2  0.34000  best" in line for line in screen_lines(app))  # the newest eval

    asyncio.run(main())


def test_a_resize_to_80x24_and_back_refits_the_rows():
    app = dashboard(FakeLiveSource(run_events("detr", distill=True)))

    async def main() -> None:
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert {row.region.height for row in app.loss_rows.values()} == {3}  # 22 lines for 6 terms
            await pilot.resize_terminal(*SMALL)
            await pilot.pause()
            assert_every_loss_term_and_key_visible(app, list(app.loss_rows), ["q: stop", "ctrl+q: quit"])
            assert {row.region.height for row in app.loss_rows.values()} == {1}
            await pilot.resize_terminal(*SIZE)
            await pilot.pause()
            assert {row.region.height for row in app.loss_rows.values()} == {3}

    asyncio.run(main())


# -- the run's machine in a replay (issue 16, finding 13) ----------------------------------------------------

def test_a_replay_shows_the_runs_machine_and_never_samples_this_one(tmp_path):
    sampled: list[str] = []
    path = write_events(tmp_path / "events.jsonl", run_events("centernet", end="finished"))
    app = make_dashboard(EventsFileSource(path), clock=lambda: NOW,
                         system_stats=lambda device: sampled.append(device) or fixed_stats(device))

    async def check(pilot) -> None:
        assert app.query_one("#system").border_title == "run's machine"
        panel = text(app, "#system")
        assert panel.startswith("trainbox · 8 cores · 32.0 GiB RAM\nAMD EPYC 7B13") and "replay" in panel
        assert "CPU 37%" not in panel and sampled == []

    drive(app, check)


def test_a_replay_of_a_run_on_a_gpu_names_it(tmp_path):
    machine = {**MACHINE, "gpu": "NVIDIA H200"}
    events = run_events(end="finished", machine=machine)
    events[1] = dataclasses.replace(events[1], device="cuda:0")
    app = dashboard(EventsFileSource(write_events(tmp_path / "events.jsonl", events)))

    async def check(pilot) -> None:
        assert "NVIDIA H200" in text(app, "#system")

    drive(app, check)


def test_a_replay_of_an_older_run_without_machine_facts_says_so(tmp_path):
    lines = as_dicts(run_events(end="finished"))
    del lines[1]["machine"]  # events.jsonl written before RunStarted carried the machine
    path = tmp_path / "events.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in lines), encoding="utf-8")
    app = dashboard(EventsFileSource(path))

    async def check(pilot) -> None:
        assert text(app, "#system").startswith("not recorded") and "replay" in text(app, "#system")

    drive(app, check)


def test_following_a_run_that_trains_on_this_machine_shows_its_live_load(tmp_path):
    here = {**MACHINE, "host": platform.node()}
    app = dashboard(EventsFileSource(write_events(tmp_path / "events.jsonl", run_events(machine=here))))

    async def check(pilot) -> None:
        panel = text(app, "#system")
        assert "now: CPU 37% · RAM 3.0/8.0 GiB" in panel and "replay" not in panel

    drive(app, check)


def test_run_started_records_the_machine_of_the_process_that_emits_it():
    event = run_events(machine={})[1]
    fresh = dataclasses.replace(event, machine=machine_facts())
    facts = fresh.to_dict()["machine"]
    assert facts["host"] == platform.node() and facts["cores"] >= 1 and facts["ram_bytes"] > 0
    assert json.loads(json.dumps(facts)) == facts
    default = RunStarted(**{f.name: getattr(event, f.name) for f in dataclasses.fields(event) if f.name != "machine"})
    assert default.machine["host"] == platform.node()  # filled in by default: the trainer need not pass it
