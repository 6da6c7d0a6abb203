"""descgen generate with a real vLLM engine on the CPU: served (OpenAI-compatible) and in-process.

A tiny random Llama (scripts/make_tiny_llama.py) stands in for a real model: what it writes is
random words, but the engine, its structured outputs, the HTTP server and the whole generate
pipeline are the real ones.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from descgen.serve import ServerError, port_is_free, set_parent_death_signal, start_server
from descgen.store import Store

REPO = Path(__file__).resolve().parents[2]
MAIN_DESCGEN = Path(sys.executable).with_name("descgen")
N_CLASSES = 10
SERVED_NAME = "tiny-llama"


def _descgen_main() -> list[str]:
    if MAIN_DESCGEN.exists():
        return [str(MAIN_DESCGEN)]
    return [sys.executable, "-c", "from descgen.cli import main; main()"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1")
    return env


@pytest.fixture(scope="module")
def class_file(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first ten UCF101 classes, as an id,name list."""
    with open(shared_data / "labels" / "ucf101.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:N_CLASSES]
    path = tmp_path_factory.mktemp("classes") / "ucf10.csv"
    path.write_text("id,name\n" + "".join(f"{i},{row['name']}\n" for i, row in enumerate(rows)))
    return path


def _class_names(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return [row["name"] for row in csv.DictReader(fh)]


@dataclass
class Served:
    process: subprocess.Popen
    base_url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1].split("/")[0])

    def chat_requests(self) -> int:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return sum(1 for line in text.splitlines() if "POST /v1/chat/completions " in line)


@pytest.fixture(scope="module")
def served(vllm_python: Path, tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``descgen serve`` running the tiny model on loopback."""
    work = tmp_path_factory.mktemp("server")
    ready, log = work / "url", work / "server.log"
    cmd = [
        *_descgen_main(),
        "serve",
        "--python",
        str(vllm_python),
        "--model",
        str(tiny_llama),
        "--served-model-name",
        SERVED_NAME,
        "--log",
        str(log),
        "--ready-file",
        str(ready),
        "--timeout",
        "600",
        "--max-model-len",
        "2048",
        "--enforce-eager",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        preexec_fn=set_parent_death_signal,  # a killed test run leaves no server behind
    )
    deadline = time.monotonic() + 660
    while not ready.exists():
        if proc.poll() is not None:
            pytest.fail(f"server did not start (status {proc.returncode}):\n{proc.stderr.read()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("server did not start in time")
        time.sleep(0.5)
    server = Served(proc, ready.read_text().strip(), log)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)


def _generate(
    descgen: list[str], classes: Path, cache: Path, *args: str, timeout: float = 900
) -> subprocess.CompletedProcess:
    cmd = [
        *descgen,
        "generate",
        "--classes",
        str(classes),
        "--dataset",
        "ucf10",
        "--cache",
        str(cache),
        "--n",
        "2",
        "--max-invalid",
        "3",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env(), cwd=REPO)


def _check_rows(cache: Path, names: list[str], backend: str, model: str) -> list[dict]:
    """Every class has answers stored with provenance; each raw answer is schema-shaped JSON."""
    with Store(cache, create=False) as store:
        assert store.integrity_check() == "ok"
        rows = store.generations()
        assert rows, "no generation row was written"
        by_class: dict[str, list[dict]] = {}
        for row in rows:
            by_class.setdefault(row["class_name"], []).append(row)
            assert row["backend"] == backend and row["model"] == model
            assert row["status"] in ("ok", "invalid"), (row["status"], row["error"])
            assert row["raw_response"], "raw response not stored"
            # Structured outputs: whatever the words, the answer is JSON of the requested shape.
            answer = json.loads(row["raw_response"])
            assert set(answer) == {"spatial", "temporal"}
            assert len(answer["spatial"]) == 2 and len(answer["temporal"]) == 2
            assert all(isinstance(p, str) for p in answer["spatial"] + answer["temporal"])
            assert row["prompt_tokens"] and row["prompt_tokens"] > 0
            assert row["completion_tokens"] and row["completion_tokens"] > 0
        assert sorted(by_class) == sorted(names)
        set_ids = {row["set_id"] for row in rows}
        assert len(set_ids) == 1
        descriptions = store.descriptions(set_ids.pop())
    for name in names:
        assert any(r["status"] == "ok" for r in by_class[name]), f"{name}: no valid answer"
        assert len(descriptions[name]["spatial"]) == 2 and len(descriptions[name]["temporal"]) == 2
        assert all(text.startswith("A video") for text in descriptions[name]["spatial"])
    return rows


@pytest.mark.vllm
@pytest.mark.slow
def test_generate_through_served_vllm(served: Served, class_file: Path, tmp_path: Path) -> None:
    cache = tmp_path / "served.db"
    names = _class_names(class_file)
    args = ("--backend", "openai", "--base-url", served.base_url, "--model", SERVED_NAME)
    args += ("--concurrency", "8", "--timeout", "120", "--max-attempts", "2")
    before = served.chat_requests()

    first = _generate(_descgen_main(), class_file, cache, *args)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Traceback" not in first.stderr
    rows = _check_rows(cache, names, "openai", SERVED_NAME)
    sent = served.chat_requests() - before
    assert sent == len(rows), f"server saw {sent} chat requests for {len(rows)} stored answers"

    # Everything is cached now: the same command sends nothing and changes nothing.
    second = _generate(_descgen_main(), class_file, cache, *args)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"{N_CLASSES} cached" in second.stdout
    assert served.chat_requests() - before == sent
    with Store(cache, create=False) as store:
        assert store.count_rows("generations") == len(rows)


@pytest.mark.vllm
@pytest.mark.slow
def test_server_stops_cleanly(served: Served) -> None:
    """SIGTERM to the serve command stops the whole server and frees the port."""
    port = served.port
    assert not port_is_free(port)
    served.process.send_signal(signal.SIGTERM)
    assert served.process.wait(timeout=120) == 0
    assert port_is_free(port)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0
    # No process that was started for this server is left.
    assert _processes_with_arg(f"--port\0{port}\0") == []


@pytest.mark.vllm
@pytest.mark.slow
def test_generate_in_process_vllm(
    vllm_python: Path, tiny_llama: Path, class_file: Path, tmp_path: Path
) -> None:
    descgen = [str(vllm_python.with_name("descgen"))]
    cache = tmp_path / "inproc.db"
    names = _class_names(class_file)
    args = (
        "--backend",
        "vllm",
        "--model",
        str(tiny_llama),
        "--vllm-opt",
        "enforce_eager=true",
        "--vllm-opt",
        "max_model_len=2048",
    )
    first = _generate(descgen, class_file, cache, *args)
    assert first.returncode == 0, first.stdout + first.stderr[-4000:]
    assert "Traceback" not in first.stderr
    rows = _check_rows(cache, names, "vllm", str(tiny_llama))
    # One batched call per round: the first round answers every class.
    assert len([r for r in rows if r["attempt"] == 1]) == N_CLASSES

    t0 = time.monotonic()
    second = _generate(descgen, class_file, cache, *args)
    elapsed = time.monotonic() - t0
    assert second.returncode == 0, second.stdout + second.stderr[-4000:]
    assert f"{N_CLASSES} cached" in second.stdout and " 0 requests" in second.stdout
    with Store(cache, create=False) as store:
        assert store.count_rows("generations") == len(rows)
    # No engine was started for a fully cached run (starting one takes far longer).
    assert elapsed < 30, f"a fully cached run took {elapsed:.1f} s"


def test_start_server_reports_a_failed_start(tmp_path: Path) -> None:
    """An interpreter without vLLM: the error says so, with the log tail, and nothing is left."""
    log = tmp_path / "server.log"
    t0 = time.monotonic()
    with pytest.raises(ServerError) as info:
        start_server(sys.executable if _lacks_vllm() else "/bin/false", "no-model", log_path=log, timeout=60)
    message = str(info.value)
    assert "before it was ready" in message
    if _lacks_vllm():
        assert "vllm" in message.lower()
    assert time.monotonic() - t0 < 60


def _processes_with_arg(needle: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if needle in cmdline:
            found.append(int(entry.name))
    return found


def _lacks_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is None


@pytest.mark.skipif(not _lacks_vllm(), reason="vLLM is installed in this environment")
def test_vllm_backend_without_vllm_says_how_to_install(tmp_path: Path) -> None:
    from descgen.backends import BackendError, get_backend

    with pytest.raises(BackendError) as info:
        get_backend("vllm", model="some-model")
    assert "pip install 'msta-toolkit[vllm]'" in str(info.value)
    assert "scripts/setup_vllm_cpu.sh" in str(info.value)

    classes = tmp_path / "two.csv"
    classes.write_text("id,name\n0,jumping\n1,running\n")
    cache = tmp_path / "cache.db"
    proc = _generate(
        _descgen_main(), classes, cache, "--backend", "vllm", "--model", "some-model", timeout=120
    )
    assert proc.returncode == 2
    assert "setup_vllm_cpu.sh" in proc.stderr and "Traceback" not in proc.stderr
    assert not cache.exists()


def test_vllm_option_values_are_typed() -> None:
    from descgen.backends.vllm_backend import parse_option_value

    assert parse_option_value("2048") == 2048
    assert parse_option_value("0.5") == 0.5
    assert parse_option_value("true") is True and parse_option_value("False") is False
    assert parse_option_value("bfloat16") == "bfloat16"
    assert parse_option_value(7) == 7
