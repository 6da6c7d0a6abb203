"""The ``descgen`` command line. Each area registers its commands from its own module."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="descgen",
    help="Write spatial and temporal class descriptions with an LLM, cache them in SQLite, encode and audit them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
prompts_app = typer.Typer(help="List, show and compare the versioned prompt files.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")


def _register() -> None:
    # Imported for their side effect of adding commands to ``app``; each module keeps its
    # heavy imports inside the command functions.
    from descgen import cli_audit, cli_generate, cli_serve  # noqa: F401

    app.command("serve", context_settings=cli_serve.CONTEXT_SETTINGS)(cli_serve.serve)


def main() -> None:
    _register()
    app()


if __name__ == "__main__":
    # Run through the importable module so that the command modules register on the same app.
    from descgen.cli import main as _main

    _main()
