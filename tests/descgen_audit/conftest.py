"""Fixtures for the encode, audit and transfer tests: real cache files, a tiny random-weight CLIP,
the command line in this process and in a subprocess, and the loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from descgen.store import DescriptionSet, Store

REPO = Path(__file__).resolve().parents[2]
# The real command line in a separate process (what a user or a script runs).
DESCGEN = [sys.executable, "-c", "from descgen.cli import main; main()"]


def run_cli_process(*args: str, env: dict | None = None, timeout: float = 300) -> CliResult:
    """Run ``descgen ARGS`` as a subprocess from the repository root and capture its output."""
    res = subprocess.run(
        [*DESCGEN, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    return CliResult(res.returncode, res.stdout, res.stderr)


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str) -> CliResult:
    """Run a descgen command in this process (the real Typer app) and capture its output."""
    from typer.testing import CliRunner

    from descgen.cli import app

    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return CliResult(res.exit_code, res.stdout, res.stderr)


@pytest.fixture
def descgen_cli():
    """Run a descgen command in this process: ``descgen_cli("audit", "--cache", ...)``."""
    return run_cli


@pytest.fixture
def descgen_process():
    """Run a descgen command in a subprocess: ``descgen_process("audit", ..., env={...})``."""
    return run_cli_process


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch):
    """The loopback OpenAI-compatible server (tests/descgen/fake_openai.py), its key in OPENAI_API_KEY."""
    from tests.descgen.fake_openai import FakeOpenAI

    server = FakeOpenAI().start()
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    try:
        yield server
    finally:
        server.stop()


TEMPLATE_S = "A video about {}."
TEMPLATE_T = "A video of {cls} generally involves the following step: {}, which is a sub-step."


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip_config: Path):
    from descgen.encode import RandomWeightsWarning, load_text_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return load_text_encoder(str(tiny_clip_config), "none")


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "cache.db")
    yield s
    s.close()


def make_generated_set(
    store: Store,
    dataset: str,
    classes: dict[str, tuple[list[str], list[str]]],
    n: int = 2,
    model: str = "gpt-4o-mini",
    backend: str = "openai",
    prompt_text: str = "system: describe {cls}\nuser: write {n} spatial and {n} temporal phrases",
    failures: dict[str, list[tuple[str, str]]] | None = None,
    tokens: tuple[int, int] = (100, 50),
) -> DescriptionSet:
    """A set as the generator writes it: prompt row, set, one ok generation per class, failed attempts."""
    import hashlib

    fp = hashlib.sha256(prompt_text.encode()).hexdigest()
    store.ensure_prompt(fp, "test-prompt", "1", prompt_text)
    params = {"temperature": 0.7, "seed": 1, "n": n, "max_tokens": 800}
    s = store.ensure_set(dataset, fp, backend, model, params, n)
    for i, (name, (spatial, temporal)) in enumerate(classes.items()):
        for status, reason in (failures or {}).get(name, []):
            store.record_attempt(
                s,
                name,
                class_id=i,
                status=status,
                error=reason,
                raw_response="not json {",
                request={"messages": [{"role": "user", "content": f"describe {name}"}]},
                attempt=1,
                seed=1,
                prompt_tokens=tokens[0],
                completion_tokens=0,
            )
        if spatial is None:
            continue
        store.record_success(
            s,
            name,
            spatial,
            temporal,
            class_id=i,
            raw_response=json.dumps({"spatial": spatial, "temporal": temporal}),
            request={"messages": [{"role": "user", "content": f"describe {name}"}]},
            attempt=1,
            seed=1,
            prompt_tokens=tokens[0],
            completion_tokens=tokens[1],
            latency_s=0.1,
        )
    return s


def sentences(cls: str, spatial: list[str], temporal: list[str]) -> tuple[list[str], list[str]]:
    return [TEMPLATE_S.format(p) for p in spatial], [TEMPLATE_T.format(p, cls=cls) for p in temporal]


def write_classes(path: Path, names: list[str]) -> Path:
    lines = ["id,name"] + [f'{i},"{n}"' if "," in n else f"{i},{n}" for i, n in enumerate(names)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
