"""The ``descgen`` command line: builds the Typer app from the command functions of the area modules.

The command modules only define functions; this module registers them. User errors
(``DescgenError``) end every command the same way, here and nowhere else: one line
``error: <message>`` on stderr and the error's exit code.
"""

from __future__ import annotations

from typing import Any

import click
import typer
from typer.core import TyperGroup

from descgen import cli_audit, cli_batch, cli_generate, cli_serve
from descgen.errors import DescgenError

INTERRUPTED_EXIT = 130
# What an interrupted command says (default: "interrupted").
_INTERRUPTED = {
    "generate": "interrupted: finished classes are saved; run the same command again to complete",
}


class DescgenGroup(TyperGroup):
    """A command group that turns user errors and Ctrl-C into one line on stderr and an exit code.

    It sits around every command, so it works the same for the console script and for tests
    that invoke the app in-process.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            typer.echo(_INTERRUPTED.get(ctx.invoked_subcommand or "", "interrupted"), err=True)
            raise typer.Exit(INTERRUPTED_EXIT) from None
        except DescgenError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None


def build_app() -> typer.Typer:
    """The descgen Typer app with every command registered."""
    app = typer.Typer(
        name="descgen",
        cls=DescgenGroup,
        help="Write spatial and temporal class descriptions with an LLM, cache them in SQLite, encode and audit them.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    app.command("generate")(cli_generate.generate)
    app.command("datasets")(cli_generate.datasets_cmd)
    prompts_app = typer.Typer(help="List, show and compare the versioned prompt files.", no_args_is_help=True)
    prompts_app.command("list")(cli_generate.prompts_list)
    prompts_app.command("show")(cli_generate.prompts_show)
    prompts_app.command("diff")(cli_generate.prompts_diff)
    app.add_typer(prompts_app, name="prompts")
    for name, func in cli_audit.COMMANDS.items():
        app.command(name)(func)
    app.command("serve", context_settings=cli_serve.CONTEXT_SETTINGS)(cli_serve.serve)
    batch_app = typer.Typer(help="Batches: status, collect, cancel.", no_args_is_help=True)
    for name, func in cli_batch.COMMANDS.items():
        batch_app.command(name)(func)
    app.add_typer(batch_app, name="batch")
    return app


app = build_app()


def _register() -> typer.Typer:
    """Kept for callers of the former registration step: the app is complete on import."""
    return app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
