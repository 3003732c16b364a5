"""The Textual dashboard: widgets that show a DashboardState fed by an event source (DESIGN rule 7)."""

from __future__ import annotations

import dataclasses
import platform
import statistics
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.events import Key
from textual.screen import ModalScreen
from textual.widgets import ProgressBar, RichLog, Sparkline, Static

from uhd_cli.console import format_duration
from uhd_cli.dashboard.sources import EventSource
from uhd_cli.dashboard.state import DashboardState
from uhd_cli.dashboard.system import GIB, SystemMonitor, SystemStats
from uhd_core.engine.events import RunFailed, format_event_line

#: Evaluations listed under validation (fewer when the panel is short); older ones scroll out (the
#: best stays named above them).
EVAL_ROWS = 8
LOG_LINES = 2000
#: Lines per loss row while the panel has room; rows shrink to one line ("term value  plot") so that
#: every term of the head stays on screen in an 80x24 terminal.
LOSS_ROW_MAX_LINES = 4
#: Screens shorter than this get the compact layout (titled top borders only); 80x24 is the target.
SHORT_SCREEN_ROWS = 32


def format_system(stats: SystemStats) -> str:
    lines = [f"CPU {stats.cpu_percent:.0f}% · RAM {stats.ram_used / GIB:.1f}/{stats.ram_total / GIB:.1f} GiB"]
    if stats.gpu:
        lines.append(stats.gpu)
    return "\n".join(lines)


def format_machine(machine: dict[str, Any], device: str) -> list[str]:
    """The run's machine (RunStarted.machine, see uhd_core.engine.events.machine_facts) as panel lines."""
    if not machine:
        return ["not recorded (a run of an older uhd)"]
    head = [str(machine.get("host") or "unknown host")]
    if machine.get("cores"):
        head.append(f"{machine['cores']} cores")
    if machine.get("ram_bytes"):
        head.append(f"{machine['ram_bytes'] / GIB:.1f} GiB RAM")
    gpu = machine.get("gpu") or ("CPU only" if device in ("", "cpu") else device)
    return [" · ".join(head), str(machine.get("cpu") or "unknown CPU"), str(gpu)]


class ConfirmStop(ModalScreen[bool]):
    """y/n before stopping a live run."""

    BINDINGS: ClassVar[list[Binding]] = [
        Binding("y", "answer(True)", "yes"), Binding("n", "answer(False)", "no"),
        Binding("escape", "answer(False)", "no"),
    ]

    def compose(self) -> ComposeResult:
        yield Static("Stop training?\n\nThe current step finishes and a last_*.pt checkpoint is written.\n\n"
                     "[b]y[/b] stop    [b]n[/b] keep training", id="confirm")

    def action_answer(self, stop: bool) -> None:
        self.dismiss(stop)


class LossRow(Horizontal):
    """One loss term: its latest value and its plot over the logged steps.

    Two lines or more: the term above its value; one line (a short panel): ``term value`` side by side.
    """

    def __init__(self, term: str) -> None:
        super().__init__(classes="loss-row")
        self.term = term
        self.latest: float | None = None
        self.value = Static(classes="loss-value")
        self.plot = Sparkline([], summary_function=statistics.fmean)

    def compose(self) -> ComposeResult:
        yield self.value
        yield self.plot

    def show(self, value: float | None, history: list[float]) -> None:
        self.latest = value
        self._show_value()
        self.plot.data = history

    def fit(self, lines: int) -> None:
        """Make the row ``lines`` high (the loss panel shares its height among the rows)."""
        self.styles.height = lines
        self.set_class(lines < 2, "one-line")
        self._show_value()

    def _show_value(self) -> None:
        value = "-" if self.latest is None else f"{self.latest:.4f}"
        sep = " " if self.has_class("one-line") else "\n"
        self.value.update(Text.assemble((self.term, "bold"), sep, value))


class LossPanel(VerticalScroll):
    """The loss rows; a new size (terminal resized, log pane toggled) re-fits their heights."""

    def on_resize(self) -> None:
        fit = getattr(self.app, "fit_loss_rows", None)
        if fit is not None:
            self.call_after_refresh(fit)


class DashboardApp(App[None]):
    TITLE = "uhd dashboard"
    # Screen.-short: under SHORT_SCREEN_ROWS rows (80x24) panels keep only their titled top border,
    # and an open log pane takes the files panel's place (its lines name the checkpoints too).
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (SHORT_SCREEN_ROWS, "-tall")]
    CSS = """
    Screen { layout: vertical; }
    .panel { border: round $primary; height: auto; padding: 0 1; }
    Screen.-short .panel { border: none; border-top: round $primary; }
    #progress-rows { height: auto; }
    #progress-rows Horizontal { height: 1; }
    .bar-label { width: 14; }
    /* min-height: set from the number of loss terms (fit_loss_rows), so the log pane cannot squeeze them */
    #middle { height: 1fr; }
    #losses { width: 2fr; height: 100%; }
    #side { width: 1fr; height: 100%; }
    #side .panel { width: 100%; }
    Screen.-short #evals { height: 1fr; }  /* as many evaluations as fit (_evals_text) */
    #system { text-wrap: nowrap; text-overflow: ellipsis; }
    /* row heights are set by fit_loss_rows: up to LOSS_ROW_MAX_LINES while the panel has room */
    .loss-row { height: 2; }
    .loss-value { width: 16; }
    .loss-row.one-line .loss-value { width: 24; }
    .loss-row Sparkline { width: 1fr; height: 100%; }
    #log { height: 1fr; max-height: 10; min-height: 3; border: round $secondary; display: none; }
    Screen.-short #log { border: none; border-top: round $secondary; }
    Screen.-short.-log-open #files { display: none; }
    #status { height: 1; padding: 0 1; }
    #status.failed { background: $error; color: $text; }
    #status.finished { background: $success; color: $text; }
    #keys { height: 1; padding: 0 1; background: $panel; color: $text-muted; }
    ConfirmStop { align: center middle; }
    #confirm { width: 64; height: auto; border: thick $warning; padding: 1 2; background: $surface; }
    """
    BINDINGS: ClassVar[list[Binding]] = [
        Binding("q", "quit_or_stop", "stop"),
        Binding("s", "save_checkpoint", "save"),
        Binding("l", "toggle_log", "log"),
    ]

    def __init__(self, source: EventSource, *, clock: Callable[[], float] = time.time,
                 system_stats: Callable[[str], SystemStats] | None = None, poll_interval: float = 0.1) -> None:
        super().__init__()
        self.source = source
        self.clock = clock
        self.system_stats = system_stats or SystemMonitor()
        self.poll_interval = poll_interval
        self.state = DashboardState()
        self.loss_rows: dict[str, LossRow] = {}
        self.stats: SystemStats | None = None  # this machine's load, sampled only where it is the run's
        # Kept here while the log pane is hidden: a hidden RichLog would queue every line unbounded.
        self.log_lines: deque[str] = deque(maxlen=LOG_LINES)

    # -- layout -----------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="header", classes="panel")
        with Vertical(id="progress", classes="panel"):
            # total=1 until the run says more: a bar without a total animates as "indeterminate"
            with Vertical(id="progress-rows"):
                with Horizontal():
                    yield Static(id="epoch-label", classes="bar-label")
                    yield ProgressBar(total=1, id="epoch-bar", show_eta=False)
                with Horizontal():
                    yield Static(id="step-label", classes="bar-label")
                    yield ProgressBar(total=1, id="step-bar", show_eta=False)
            yield Static(id="speed")
        with Horizontal(id="middle"):
            yield LossPanel(id="losses", classes="panel")
            with Vertical(id="side"):
                yield Static(id="evals", classes="panel")
                yield Static(id="system", classes="panel")
        yield Static(id="files", classes="panel")
        yield RichLog(id="log", max_lines=LOG_LINES, wrap=True)
        yield Static(id="status")
        yield Static(id="keys")

    def on_mount(self) -> None:
        machine = "machine" if self.source.controls_training else "run's machine"
        titles = {"#header": "run", "#progress": "progress", "#losses": "losses",
                  "#evals": "validation mAP@0.5", "#system": machine, "#files": "files", "#log": "log"}
        for selector, title in titles.items():
            self.query_one(selector).border_title = title
        self.source.start()
        self.poll_events()
        self.sample_system()
        self.set_interval(self.poll_interval, self.poll_events)
        self.set_interval(1.0, self.show_progress)  # elapsed time moves without events
        self.set_interval(2.0, self.sample_system)

    # -- events in ----------------------------------------------------------------------------------
    def poll_events(self) -> None:
        events = self.source.poll()
        if not events:
            return
        for stamped in events:
            event = stamped.event
            self.state.apply(event, stamped.time)
            line = format_event_line(event)
            if line is not None:
                self._log(line)
            if isinstance(event, RunFailed) and event.traceback:
                self._log(event.traceback)
        self.show_state()

    def _log(self, line: str) -> None:
        self.log_lines.append(line)
        log = self.query_one("#log", RichLog)
        if log.display:
            log.write(line)

    def live_load_is_the_runs(self) -> bool:
        """Whether this machine's load is the run's: it trains in this process, or the followed
        events.jsonl is still being written on this host. A replay shows the run's recorded machine."""
        if self.source.controls_training:
            return True
        s = self.state
        return s.started and not s.ended and s.machine.get("host") == platform.node()

    def sample_system(self) -> None:
        self.stats = self.system_stats(self.state.device) if self.live_load_is_the_runs() else None
        self._show_machine()

    def _show_machine(self) -> None:
        panel = self.query_one("#system", Static)
        if self.source.controls_training:
            panel.update(format_system(self.stats) if self.stats else "")
            return
        s = self.state
        lines = format_machine(s.machine, s.device) if s.started else ["waiting for the run to start"]
        if self.stats is not None:  # following a run that trains on this machine now
            lines.append("now: " + format_system(dataclasses.replace(self.stats, gpu="")))
            if s.device.startswith("cuda") and self.stats.gpu:
                lines.append("now: " + self.stats.gpu)
        elif s.started:
            lines.append("replay: no live load shown")
        panel.update(Text("\n".join(lines)))  # Text: a host or CPU name may hold brackets

    # -- state out ----------------------------------------------------------------------------------
    def show_state(self) -> None:
        state = self.state
        self.query_one("#header", Static).update(self._header_text())
        self.show_progress()
        losses = self.query_one("#losses", VerticalScroll)
        mounted = False
        for term in state.loss_terms:
            if term not in self.loss_rows:
                self.loss_rows[term] = LossRow(term)
                losses.mount(self.loss_rows[term])
                mounted = True
            self.loss_rows[term].show(state.losses.get(term), list(state.history.get(term, ())))
        if mounted:
            self.call_after_refresh(self.fit_loss_rows)  # once the new rows are laid out
        self.query_one("#evals", Static).update(self._evals_text())
        if self.live_load_is_the_runs() != (self.stats is not None):
            self.sample_system()  # the run started, ended, or turned out to be a replay
        else:
            self._show_machine()
        self.query_one("#files", Static).update(Text(
            f"latest checkpoint  {state.latest_checkpoint or '-'}\n"
            f"best checkpoint    {state.best_checkpoint or '-'}\n"
            f"sample renders     {state.render_dir or '-'}"))
        self._show_status()
        if state.ended and isinstance(self.screen, ConfirmStop):
            self.screen.dismiss(False)  # nothing left to stop

    def show_progress(self) -> None:
        state = self.state
        if state.started:
            self.query_one("#epoch-label", Static).update(f"epoch {state.epoch}/{state.epochs}")
            self.query_one("#epoch-bar", ProgressBar).update(total=state.epochs, progress=state.epoch_progress())
            self.query_one("#step-label", Static).update(f"step {state.step}/{state.steps_per_epoch}")
            self.query_one("#step-bar", ProgressBar).update(total=state.steps_per_epoch, progress=state.step)
        elif state.decode_total:
            self.query_one("#epoch-label", Static).update("decoding")
            self.query_one("#epoch-bar", ProgressBar).update(total=state.decode_total, progress=state.decode_done)
        parts = [f"elapsed {format_duration(state.elapsed_seconds(self.clock()))}"]
        if state.losses:  # speed, ETA and lr exist from the first logged step on
            parts = [f"{state.imgs_per_s:,.0f} img/s", f"ETA {format_duration(state.eta_seconds())}", *parts,
                     f"lr {state.lr:.2e}"]
        self.query_one("#speed", Static).update(" · ".join(parts))

    def _header_text(self) -> Text:
        # Text, not markup: names and paths may hold brackets
        s = self.state
        if not s.started:
            return Text(s.data_line or "waiting for the run to start ...")
        return Text.assemble(
            (s.exp_name, "bold"),
            f" · preset {s.preset or 'none'} · {s.arch}/{s.head} · {s.params:,} params · "
            f"input {s.img_size[0]}x{s.img_size[1]} · device {s.device}\n"
            f"data {s.num_train} train / {s.num_val} val images · batch {s.batch_size} · run dir {s.run_dir}"
            + (f"\nresumed from {s.resumed_from}" if s.resumed_from else ""))

    # -- fitting the panels to the screen ------------------------------------------------------------
    def fit_loss_rows(self) -> None:
        """Share the loss panel's height among the rows (1..LOSS_ROW_MAX_LINES lines each) and keep
        the panel at least one line per term, so neither a short screen nor the log pane hides a term."""
        losses = self.query_one("#losses", VerticalScroll)
        if self.loss_rows:
            chrome = losses.outer_size.height - losses.scrollable_content_region.height  # borders, padding
            self.query_one("#middle").styles.min_height = len(self.loss_rows) + max(0, chrome)
            lines = losses.scrollable_content_region.height // len(self.loss_rows)
            for row in self.loss_rows.values():
                row.fit(max(1, min(LOSS_ROW_MAX_LINES, lines)))
        self.query_one("#evals", Static).update(self._evals_text())

    def _evals_text(self) -> Text:
        s = self.state
        if not s.evals:
            return Text("no evaluation yet")
        text = Text(f"best {s.best_map50:.5f} (epoch {s.best_epoch})\n", style="bold")
        evals, rows = self.query_one("#evals", Static), EVAL_ROWS
        if evals.screen.has_class("-short") and evals.content_size.height:  # a fixed share of the side
            rows = min(EVAL_ROWS, max(1, evals.content_size.height - 1))  # the best line takes one
        if len(s.evals) > rows:
            rows = max(1, rows - 1)  # and "... N earlier" another
            text.append(f"... {len(s.evals) - rows} earlier\n", style="dim")
        for row in s.evals[-rows:]:
            best = row.epoch == s.best_epoch
            text.append(f"epoch {row.epoch:>4}  {row.map50:.5f}" + ("  best" if best else "") + "\n",
                        style="bold green" if best else "")
        text.rstrip()
        return text

    def _show_status(self) -> None:
        s, status = self.state, self.query_one("#status", Static)
        elapsed = format_duration(s.elapsed_seconds(self.clock()))
        status.set_class(bool(s.error), "failed")
        status.set_class(s.finished, "finished")
        if s.error:
            status.update(Text(f"FAILED: {s.error} · press any key to close"))
        elif s.finished:
            best = f"best mAP@0.5 {s.best_map50:.5f}" if s.best_map50 is not None else "no evaluation"
            how = f"stopped at epoch {s.epoch}" if s.stopped_early else "finished"
            status.update(f"{how} after {elapsed} · {best} · press any key to close")
        elif s.stop_requested:
            status.update("stopping after this step; a last_*.pt checkpoint follows ...")
        elif s.started:
            status.update("training")
        else:
            status.update("preparing data ...")
        self.query_one("#keys", Static).update(Text(self._keys_text()))

    def _keys_text(self) -> str:
        if self.state.ended:
            return "any key: close · l: log"
        # The keys first and under 78 characters: an 80-column terminal shows all of them.
        if not self.source.controls_training:
            return (f"q: close this viewer · l: log · q and s do not control that process "
                    f"(following {self.source.description})")
        return "q: stop (asks) · s: save checkpoint · l: log · ctrl+q: quit (stops training)"

    # -- keys -----------------------------------------------------------------------------------------
    def on_key(self, event: Key) -> None:
        # Runs before the bindings: after the run, any key but the log toggle closes the dashboard.
        if self.state.ended and event.key != "l" and not isinstance(self.screen, ModalScreen):
            event.stop()
            self.exit()

    def action_quit_or_stop(self) -> None:
        if self.state.ended or not self.source.controls_training:
            self.exit()
            return

        def answered(stop: bool | None) -> None:
            if stop and not self.state.ended:
                self.source.stop()
                self.state.stop_requested = True
                self._show_status()

        self.push_screen(ConfirmStop(), answered)

    def action_save_checkpoint(self) -> None:
        if not self.source.controls_training:
            self.notify("s saves only in the process that trains", severity="warning")
            return
        self.source.save()
        self.notify("checkpoint requested; it appears under files when written")

    def action_toggle_log(self) -> None:
        log = self.query_one("#log", RichLog)
        log.display = not log.display
        log.screen.set_class(log.display, "-log-open")
        if log.display:
            log.clear()
            for line in self.log_lines:
                log.write(line)


def make_dashboard(source: EventSource, *, clock: Callable[[], float] = time.time,
                   system_stats: Callable[[str], SystemStats] | None = None,
                   poll_interval: float = 0.1) -> DashboardApp:
    """The dashboard over a live run (LiveTrainingSource) or an events.jsonl (EventsFileSource).

    ``clock`` drives the elapsed time and ``system_stats`` the machine panel, so tests can fix both.
    """
    return DashboardApp(source, clock=clock, system_stats=system_stats, poll_interval=poll_interval)
