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
