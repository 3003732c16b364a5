"""The `uhd` command. One module per command under uhd_cli/commands; no logic here."""

from __future__ import annotations

import typer

from uhd_cli.commands import dataset
from uhd_cli.commands.anchors import anchors
from uhd_cli.commands.aug_preview import aug_preview
from uhd_cli.commands.bench import bench
from uhd_cli.commands.dashboard import dashboard
from uhd_cli.commands.dataset_check import dataset_check
from uhd_cli.commands.eval import eval_model
from uhd_cli.commands.export import export
from uhd_cli.commands.predict import predict
from uhd_cli.commands.train import train
from uhd_cli.errors import run_app, set_debug


def _plain_help_columns() -> None:
    """Help without placeholders typer adds: no ``<bool>`` type on flags, text defaults shown as written.

    typer 0.29 (its vendored click) gives every option a type column, ``<bool>`` for flags too (even
    ``--help``), though a flag takes no value; and, following click, it wraps a text ``show_default`` in
    parentheses as if it were a description such as "(dynamic)", so `uhd train --help` read
    ``[default: (default)]`` for ``--exp-name``. Fixed here, once, for every command: flags have no type,
    and a text default (the generated train flags pass their default as text) is the value itself.
    """
    import inspect

    from typer.core import TyperArgument, TyperOption

    # Private typer API: patch only the shapes seen in the installed version, so another typer
    # shows its own help columns instead of failing on every --help.
    expected = {"ctx", "show_default_is_str", "default_value"}
    if not (hasattr(TyperOption, "display_type_rich") and all(
            expected <= set(inspect.signature(getattr(cls, "_get_default_string", lambda: None)).parameters)
            for cls in (TyperOption, TyperArgument))):
        return
    display_type = TyperOption.display_type_rich

    def flag_free_display_type(self, ctx):  # noqa: ANN001, ANN202 - typer's signature
        return None if self.is_flag else display_type(self, ctx)

    TyperOption.display_type_rich = flag_free_display_type
    for cls in (TyperOption, TyperArgument):
        default_string = cls._get_default_string

        def text_as_written(self, *, ctx, show_default_is_str, default_value, _wrapped=default_string):  # noqa: ANN001, ANN202
            if show_default_is_str:
                return self.show_default
            return _wrapped(self, ctx=ctx, show_default_is_str=False, default_value=default_value)

        cls._get_default_string = text_as_written


_plain_help_columns()

app = typer.Typer(
    name="uhd",
    help="Train and deploy ultra-lightweight human detectors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("train", context_settings={"max_content_width": 120})(train)
app.add_typer(dataset.app, name="dataset")
app.command("anchors")(anchors)
app.command("aug-preview")(aug_preview)
app.command("export")(export)
app.command("eval")(eval_model)
app.command("bench")(bench)
app.command("predict")(predict)
app.command("dataset-check")(dataset_check)
app.command("dashboard")(dashboard)


@app.callback()
def _global_options(debug: bool = typer.Option(False, "--debug",
                                              help="Show the full traceback of any error (as UHD_DEBUG=1 does).")
                    ) -> None:
    set_debug(debug)


def main() -> None:
    run_app(app, prog_name="uhd")


if __name__ == "__main__":
    main()
