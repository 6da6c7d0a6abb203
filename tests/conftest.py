"""Shared test fixtures."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.descgen.fake_openai import FakeOpenAI
from tests.descgen_helpers import CliResult, run_cli, run_cli_process, serve_with_key

# Never wait for a model hub that cannot be reached.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MSTA_SHARED_DATA", REPO.parent / "shared" / "data")).resolve()
TINY_CLIP = REPO / "descgen" / "models" / "clip-tiny.json"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The reference data directory (labels, splits, published descriptions)."""
    if not (SHARED_DATA / "labels").is_dir():
        pytest.fail(f"reference data not found at {SHARED_DATA} (set MSTA_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_clip_config() -> Path:
    """Path of a tiny open_clip model config (random weights in tests)."""
    return TINY_CLIP


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


@pytest.fixture(scope="session")
def descgen_cli() -> Callable[..., CliResult]:
    """Run a descgen command in this process: ``descgen_cli("audit", "--cache", ...)``."""
    return run_cli


@pytest.fixture(scope="session")
def descgen_process() -> Callable[..., CliResult]:
    """Run a descgen command in a subprocess: ``descgen_process("generate", ..., env={...})``."""
    return run_cli_process


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    """The loopback OpenAI-compatible server (tests/descgen/fake_openai.py), its key in OPENAI_API_KEY."""
    yield from serve_with_key(FakeOpenAI(), monkeypatch)
