"""The in-process runner of the ``msta`` command line (``run_msta_process`` runs it in a child)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def msta_cli() -> Callable[[Sequence[str]], CliResult]:
    """Run ``msta ARGS`` in this process (the registered app, its error handling included); an
    exception that escapes the command fails the test with its traceback."""
    from typer.testing import CliRunner

    from msta.cli import app

    def run(args: Sequence[str]) -> CliResult:
        res = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
        return CliResult(res.exit_code, res.stdout, res.stderr)

    return run
