"""The ``msta`` command line. Each area registers its commands from its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="msta",
    help="Train, evaluate and use MSTA adapters on video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check video lists and write synthetic datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _register() -> None:
    from msta import cli_data, cli_model, cli_train  # noqa: F401

    if not data_app.registered_commands:
        data_app.command("check")(cli_data.check_command)
        data_app.command("synth")(cli_data.synth_command)


def main() -> None:
    from msta.errors import MstaError

    _register()
    try:
        app()
    except MstaError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    # Run through the importable module so that the command modules register on the same app.
    from msta.cli import main as _main

    _main()
