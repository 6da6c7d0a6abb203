"""Shared helpers of the descgen tests: the command line in this process and in a subprocess, a
loopback server with its key in the environment, caches filled the way the generator fills them,
and files made immutable (read-only caches).

The fixtures built on them (``descgen_cli``, ``descgen_process``, ``fake_openai``) are in
tests/conftest.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import pytest

if TYPE_CHECKING:
    from descgen.store import DescriptionSet, Store

REPO = Path(__file__).resolve().parents[1]
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


def run_cli(*args: str) -> CliResult:
    """``descgen ARGS`` in this process (the real Typer app, the real error handling); an exception
    that escapes the command fails the test with its traceback."""
    from typer.testing import CliRunner

    from descgen.cli import app

    res = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return CliResult(res.exit_code, res.stdout, res.stderr)


def run_cli_process(*args: str, env: dict | None = None, timeout: float = 300) -> CliResult:
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


class _KeyedServer(Protocol):
    api_key: str

    def start(self) -> Any: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_KeyedServer)


def serve_with_key(server: S, monkeypatch: pytest.MonkeyPatch) -> Iterator[S]:
    """Start a loopback server, put its key in OPENAI_API_KEY, and stop it afterwards (the body of
    a fixture: ``yield from serve_with_key(FakeOpenAI(), monkeypatch)``)."""
    server.start()
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    try:
        yield server
    finally:
        server.stop()


# --------------------------------------------------------------------------- caches

TEMPLATE_S = "A video about {}."
TEMPLATE_T = "A video of {cls} generally involves the following step: {}, which is a sub-step."


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


@contextmanager
def immutable(path: Path) -> Iterator[None]:
    """``chattr +i``: nobody, not even root, can write the file (undone on exit)."""
    res = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {res.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)
