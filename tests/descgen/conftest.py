"""Fixtures for the descgen tests: the command line in this process and in a subprocess, and the
loopback OpenAI-compatible server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.descgen.fake_openai import FakeOpenAI

REPO = Path(__file__).resolve().parents[2]
_SCRIPT = Path(sys.executable).with_name("descgen")
# The installed console script when there is one; otherwise the same entry point through -c.
DESCGEN = (
    [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-c", "from descgen.cli import main; main()"]
)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def invoke_cli(*args: str) -> CliResult:
    """``descgen ARGS`` in this process (the real Typer app, the real error handling)."""
    from typer.testing import CliRunner

    from descgen.cli import app

    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return CliResult(res.exit_code, res.stdout, res.stderr)


def run_process(*args: str, env: dict | None = None, timeout: float = 300) -> CliResult:
    """``descgen ARGS`` as a separate process from the repository root (what a user runs)."""
    res = subprocess.run(
        [*DESCGEN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )
    return CliResult(res.returncode, res.stdout, res.stderr)


@pytest.fixture
def descgen_cli() -> Callable[..., CliResult]:
    """Run a descgen command in this process: ``descgen_cli("audit", "--cache", ...)``."""
    return invoke_cli


@pytest.fixture
def descgen_process() -> Callable[..., CliResult]:
    """Run a descgen command in a subprocess: ``descgen_process("generate", ..., env={...})``."""
    return run_process


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The loopback OpenAI-compatible server, its key in OPENAI_API_KEY."""
    server = FakeOpenAI().start()
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    try:
        yield server
    finally:
        server.stop()
