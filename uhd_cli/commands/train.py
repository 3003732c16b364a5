"""`uhd train`: every flag is generated from RunConfig, so names and defaults live in one place.

Each option defaults to None, which means "not typed": only typed flags override the preset (or
the resumed checkpoint's config), as the original tool's command lines expect.
"""

from __future__ import annotations

import dataclasses
import inspect
import signal
import sys
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, Optional

import typer

from uhd_cli.console import PlainLinePrinter, RichProgressRenderer, stdout_is_interactive
from uhd_cli.errors import fail, friendly_errors
from uhd_core.config import ORIGINAL_DEFAULT_AUG_CONFIG, RunConfig, available_presets, flag_name
from uhd_core.errors import UhdError, first_line

if TYPE_CHECKING:
    from uhd_core.engine.run_setup import RunSetup
    from uhd_core.engine.trainer import RunResult

_PANELS = {
    "model": "Model", "data": "Data", "run": "Run", "optim": "Optimisation", "eval": "Evaluation",
    "cnn": "CNN", "anchor": "Anchor head", "transformer": "Transformer", "distill": "Distillation",
}


def _cli_annotation(annotation: Any) -> Any:
    """Literal/int/float/bool pass through (Typer parses them); tuples are typed as their string form."""
    if typing.get_origin(annotation) is tuple:
        return Optional[str]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _cli_annotation(inner[0])
    return Optional[annotation]


def _default_text(name: str, default: Any) -> str:
    if name in ("img_size", "teacher_img_size") and default:
        return f"{default[0]}x{default[1]}"
    if name == "classes":
        return ",".join(map(str, default))
    if name == "device":
        return "cuda if available"
    if name == "aug_config" and default == ORIGINAL_DEFAULT_AUG_CONFIG:
        return f"{default} = built-in"
    if default in ("", None, ()):
        return "none"
    return str(default)


def _generated_parameters() -> list[inspect.Parameter]:
    params = []
    for name, field in RunConfig.model_fields.items():
        extra = field.json_schema_extra or {}
        if not extra.get("cli", True):
            continue
        flag = flag_name(name)
        is_bool = field.annotation is bool or field.annotation == (bool | None)
        decl = f"{flag}/--no-{flag[2:]}" if is_bool else flag
        option = typer.Option(None, decl, help=field.description, show_default=_default_text(name, field.default),
                              metavar=extra.get("metavar"), rich_help_panel=_PANELS.get(extra.get("group")))
        # A repeatable flag (--extra-train-dir A --extra-train-dir B) is a list; not typed: None.
        annotation = Optional[list[str]] if extra.get("repeatable") else _cli_annotation(field.annotation)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return params


@friendly_errors
def train(preset: Optional[str] = None, tui: Optional[bool] = None, **flags: Any) -> None:
    """Train a detector on a YOLO-format folder (typed flags override the preset)."""
    typed = {name: value for name, value in flags.items() if value is not None and value != []}
    from uhd_core.engine.distributed import launched_by_torchrun  # torch is imported only when training
    from uhd_core.engine.run_setup import prepare_run

    if launched_by_torchrun():  # one process of `torchrun ... -m uhd_cli train ...`
        _exit_as_training_process(preset, typed)
    setup = prepare_run(preset, typed)  # the config (and a --resume checkpoint) made once, passed down
    if setup.cfg.devices > 1:
        result = _launch_local_processes(preset, typed, setup)
    elif stdout_is_interactive() if tui is None else tui:
        result = _train_in_dashboard(preset, typed, setup)
    else:
        from uhd_core.engine.api import run_training  # torch is imported only when training

        renderer = RichProgressRenderer() if stdout_is_interactive() else PlainLinePrinter()
        result = run_training(preset, typed, [renderer], setup=setup)
    print_run_summary(result)
    exit_if_stopped_by_signal(result)


#: A run that ends at mAP 0 after fewer than this fraction of its preset's epochs gets the "--epochs" hint.
SHORT_RUN_FRACTION = 0.5


def print_run_summary(result: RunResult) -> None:
    """The result lines, then what to do next: a hint after a run that learned nothing, the export and
    eval commands after one that finished."""
    if result.evaluated:
        typer.echo(f"best mAP@0.5: {result.best_map50:.5f}")
    else:
        typer.echo("best mAP@0.5: no evaluation ran yet")
    typer.echo(f"run dir: {result.run_dir}")
    if result.stopped_early:
        return  # exit_if_stopped_by_signal says how to resume
    if result.evaluated and result.best_map50 <= 0.0:
        wanted = result.preset_epochs
        if wanted and result.epochs_done < SHORT_RUN_FRACTION * wanted:
            recipe = f"preset {result.preset}" if result.preset else "default config"
            typer.echo(f"hint: mAP 0 after {result.epochs_done} epochs: the {recipe} usually needs ~{wanted} epochs; "
                       f"try --epochs {wanted} (continue this run with: uhd train --resume {result.run_dir} "
                       f"--epochs {wanted})")
        else:
            typer.echo(f"hint: mAP 0 after {result.epochs_done} epochs: check the labels with uhd dataset-check "
                       f"--image-dir {result.image_dir or 'DIR'}, or try another --lr")
    model = result.best_checkpoint or result.last_checkpoint
    if model is not None:
        onnx = Path(model).with_suffix(".onnx")
        typer.echo(f"next: uhd export {model}  (writes {onnx.name}), then uhd eval {onnx} --image-dir TEST_DIR")


def exit_if_stopped_by_signal(result: RunResult) -> None:
    """A run stopped early (a signal, or `q` in the dashboard) saved its last checkpoint: say how to go
    on; after SIGINT/SIGTERM exit 128 + signal."""
    if not result.stopped_early:
        return
    how = f"by {signal.Signals(result.stop_signal).name} " if result.stop_signal else ""
    typer.echo(f"stopped {how}after epoch {result.epochs_done}; continue with: uhd train --resume {result.run_dir}")
    if result.stop_signal:
        raise typer.Exit(128 + result.stop_signal)


def _exit_as_training_process(preset: Optional[str], typed: dict[str, Any]) -> NoReturn:
    """A process of a DDP job (torchrun, or --devices' launcher): rank 0 prints the log lines and the
    result; every rank exits 0, 128 + signal after a graceful stop, or with its error's code."""
    from uhd_core.engine.api import run_training_process
    from uhd_core.engine.distributed import DistContext

    rank = DistContext.from_env().rank
    try:
        result = run_training_process(preset, typed, [PlainLinePrinter()])
    except UhdError as exc:
        fail(str(exc) if rank == 0 else f"[rank {rank}] {exc}", exc.exit_code)
    if rank == 0:
        print_run_summary(result)
        exit_if_stopped_by_signal(result)
    raise typer.Exit(128 + result.stop_signal if result.stop_signal else 0)


def _process_entrypoint(preset: Optional[str], typed: dict[str, Any]) -> None:
    """What each process that --devices starts runs (module level: the processes are spawned)."""
    try:
        _exit_as_training_process(preset, typed)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)


def _launch_local_processes(preset: Optional[str], typed: dict[str, Any], setup: RunSetup) -> NoReturn:
    """--devices N: N processes on this machine under torch.distributed's elastic launcher; they print
    the log and the result, this process reports how they ended."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from uhd_core.engine.api import launch_local_training

    try:
        launch_local_training(preset, typed, _process_entrypoint, setup=setup)
    except SignalException as exc:
        # Ctrl-C / SIGTERM reached the launcher too: it waited for the processes, which finished their
        # step and saved (rank 0 said how to resume).
        raise typer.Exit(128 + int(exc.sigval)) from None
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        if set(codes) <= {130, 143}:
            raise typer.Exit(codes[-1]) from None  # stopped gracefully; rank 0 said how to resume
        fail(f"a training process failed (exit codes {', '.join(map(str, codes))}); its error is above", 1)
    raise typer.Exit(0)


def _train_in_dashboard(preset: Optional[str], typed: dict[str, Any], setup: RunSetup) -> RunResult:
    """Train in a worker thread under the dashboard; returns the RunResult or exits with the run's error."""
    from uhd_cli.dashboard import LiveTrainingSource, make_dashboard
    from uhd_core.engine.api import create_trainer
    from uhd_core.engine.signals import stop_on_signals

    # Setup errors (bad flags, missing data, taken run dir) raise here, before any UI: one-line errors.
    trainer, writers = create_trainer(preset, typed, setup=setup)
    source = LiveTrainingSource(trainer)
    app = make_dashboard(source)
    try:
        # SIGTERM (and SIGINT where the terminal sends one) stop training gracefully here too.
        with stop_on_signals(trainer) as received:
            app.run()
    finally:
        if not app.state.ended:
            typer.echo("dashboard closed: stopping training after this step (a last_*.pt follows) ...", err=True)
        source.close()
        for writer in writers:
            writer.close()
    error = source.error
    if isinstance(error, UhdError):
        fail(str(error), error.exit_code)
    if error is not None:
        # The traceback is in train.log (LogFileWriter wrote the RunFailed event); the terminal gets one line.
        fail(f"{type(error).__name__}: {first_line(error)} (traceback in {trainer.run_dir / 'train.log'})", 1)
    return dataclasses.replace(source.result, stop_signal=received.number)


_preset = inspect.Parameter(
    "preset", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[str],
    default=typer.Option(None, "--preset", help="Preset name (presets/NAME.yaml: "
                         + ", ".join(available_presets()) + ") or a YAML path; typed flags override it."),
)
_tui = inspect.Parameter(
    "tui", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[bool],
    default=typer.Option(None, "--tui/--no-tui", rich_help_panel=_PANELS["run"],
                         help="Show the Textual dashboard (default: when stdout is a terminal and CI is not set)."),
)
train.__signature__ = inspect.Signature([_preset, _tui, *_generated_parameters()])  # type: ignore[attr-defined]
train.__annotations__ = {p.name: p.annotation for p in train.__signature__.parameters.values()}  # type: ignore[attr-defined]


def flag_table_markdown() -> str:
    """The README's flag table (``make readme-flags`` writes it; tests/test_readme.py checks it)."""
    from uhd_core.config import PENDING_FEATURES

    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for name, field in RunConfig.model_fields.items():
        if not (field.json_schema_extra or {}).get("cli", True):
            continue
        note = " *(not implemented yet)*" if name in PENDING_FEATURES else ""
        rows.append(f"| `{flag_name(name)}` | `{_default_text(name, field.default)}` | "
                    f"{field.description}{note} |")
    return "\n".join(rows) + "\n"


def write_readme_flag_table(readme: str) -> str:
    """``readme`` with the table under '## Flags of `uhd train`' replaced by flag_table_markdown()."""
    start = readme.index("| flag | default | meaning |")
    end = readme.index("\n\n", start) + 1
    return readme[:start] + flag_table_markdown() + readme[end:]
