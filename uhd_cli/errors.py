"""Turn failures into one line on stderr and an exit code, never a traceback (unless --debug).

Exit codes: 2 = the input is unusable (a bad flag value, preset or YAML, a missing or damaged file,
a checkpoint of another architecture: every UhdError but TrainingError); 1 = the command ran and
failed (training diverged or could not save, an export that does not verify, a dataset with
problems, an unexpected exception); 130/143 = stopped by SIGINT/SIGTERM (training saves first).
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from typer.exceptions import Abort, Exit, TyperException

from uhd_core.errors import MESSAGE_LIMIT, UhdError, first_line

F = TypeVar("F", bound=Callable[..., Any])

_debug = False


def set_debug(enabled: bool) -> None:
    """``uhd --debug``: let exceptions through with their traceback instead of one line."""
    global _debug
    _debug = enabled


def debug_enabled() -> bool:
    """--debug given, or UHD_DEBUG=1 in the environment (for runs started by other tools)."""
    return _debug or os.environ.get("UHD_DEBUG", "").lower() in ("1", "true", "yes")


def fail(message: str, code: int = 2) -> NoReturn:
    # One line whatever the message holds: a second line would read as a traceback or a new record
    # to anything that parses stderr.
    text = " ".join(line.strip() for line in str(message)[: 2 * MESSAGE_LIMIT].splitlines() if line.strip())
    # Bounded whatever the message quotes: no output of UHD is unbounded (issue 16: a 2 GB line).
    if len(text) > MESSAGE_LIMIT:
        text = text[: MESSAGE_LIMIT - 3] + "..."
    print(f"error: {text}", file=sys.stderr)
    sys.exit(code)


def friendly_errors(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (Exit, Abort, TyperException):
            raise  # typer.Exit(1) and usage errors: Typer renders them
        except UhdError as exc:
            if debug_enabled():
                raise
            fail(str(exc), exc.exit_code)
        except FileExistsError as exc:
            if debug_enabled():
                raise
            fail(str(exc), 2)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - a bug or an OS failure: still one line, unless --debug
            if debug_enabled():
                raise
            fail(f"unexpected {type(exc).__name__}: {first_line(exc)} (run again with --debug for the "
                 "traceback)", 1)

    return wrapper  # type: ignore[return-value]


def run_app(app: Any, prog_name: str, args: list[str] | None = None) -> NoReturn:
    """What ``main()`` runs instead of ``app(prog_name=...)``: click's own usage errors (``--epochs abc``,
    an unknown option, a missing required option) become one ``error:`` line with exit code 2 instead
    of click's multi-line usage box. ``args`` None = ``sys.argv[1:]``."""
    try:  # recent typer vendors click (its commands raise these classes), older typer uses click itself
        from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    except ImportError:
        from click.exceptions import ClickException, NoArgsIsHelpError, UsageError
    from typer.main import get_command

    try:
        rv = get_command(app).main(args=args, prog_name=prog_name, standalone_mode=False)
    except NoArgsIsHelpError as exc:  # bare `uhd` / `uhd dataset`: the help, as in standalone mode
        exc.show()
        sys.exit(exc.exit_code)
    except UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        fail(exc.format_message() + hint, exc.exit_code)
    except ClickException as exc:
        fail(exc.format_message(), exc.exit_code)
    except Abort:  # EOF at a prompt
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    # Non-standalone click returns typer.Exit's code (dataset-check's 1) or the command's None.
    sys.exit(rv if isinstance(rv, int) else 0)
