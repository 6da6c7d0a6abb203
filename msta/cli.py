"""The ``msta`` command line: one Typer app. The command functions live in the ``cli_*`` modules
and are registered here, each behind the one handler of user errors: an
:class:`msta.errors.MstaError` (or a :class:`descgen.errors.DescgenError` raised through descgen's
API) ends the command with ``error: <message>`` on one line of stderr and the error's exit code,
an interrupt with ``interrupted`` and exit code 130; never a traceback. Both derive from
:class:`descgen.errors.UserError`, which is what the handler catches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn

import typer

from descgen.errors import UserError
from msta import cli_compare, cli_data, cli_model, cli_report, cli_train

app = typer.Typer(
    name="msta",
    help="Train, evaluate and use MSTA adapters on video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check video lists and write synthetic datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with ``error: <message>`` on stderr and exit status ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` with its user errors and interrupts turned into one line on stderr and an exit code."""

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return command


app.command("train")(user_errors(cli_train.train_command))
app.command("eval")(user_errors(cli_train.eval_command))
app.command("predict")(user_errors(cli_train.predict_command))
app.command("compare")(user_errors(cli_compare.compare_command))
app.command("params")(user_errors(cli_model.params_command))
app.command("report")(user_errors(cli_report.report_command))
app.command("sweep")(user_errors(cli_report.sweep_command))
data_app.command("check")(user_errors(cli_data.check_command))
data_app.command("synth")(user_errors(cli_data.synth_command))
data_app.command("prepare")(user_errors(cli_data.prepare_command))
data_app.command("bench")(user_errors(cli_data.bench_command))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
