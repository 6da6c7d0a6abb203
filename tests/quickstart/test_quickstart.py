"""The quickstart script, run for real: environments, synthetic videos, a local LLM served by vLLM on
the CPU, the description cache, audit, encoding, training, evaluation and plots.

The script runs twice in a fresh work directory and cache (the environments and the converted
model in the user cache are reused): the first run does everything, the second reuses what the first
built and sends no LLM request. Another run is interrupted while its LLM server starts, and must
leave nothing running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from descgen.serve import port_is_free
from descgen.store import Store
from descgen.validate import clean_phrase

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "quickstart.sh"
DATASET = "synth"

pytestmark = [pytest.mark.quickstart, pytest.mark.slow, pytest.mark.timeout(3600)]


@dataclass
class Run:
    rc: int
    output: str
    seconds: float
    pgid: int

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def _env(home: Path, cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OPENAI_API_KEY", None)
    env.update(QUICKSTART_HOME=str(home), QUICKSTART_CACHE=str(cache), **extra)
    return env


def _run_script(env: dict[str, str], timeout: float = 3000) -> Run:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
        pytest.fail(f"quickstart did not finish within {timeout} s:\n{output[-6000:]}")
    return Run(proc.returncode, output, time.monotonic() - t0, proc.pid)


def _expected_model_name() -> str:
    user_model = os.environ.get("QUICKSTART_MODEL")
    return Path(user_model).name if user_model else "gemma-3-270m"


def _class_names(home: Path) -> list[str]:
    lines = (home / "data" / "synth" / "classes.csv").read_text().splitlines()
    assert lines[0].strip() == "id,name"
    return [line.split(",", 1)[1] for line in lines[1:] if line.strip()]


def _server_port(output: str) -> int:
    m = re.search(r"server ready at http://127\.0\.0\.1:(\d+)/v1", output)
    assert m, "the output does not say where the LLM server listened"
    return int(m.group(1))


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline.strip()}")
    return found


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _assert_nothing_left(run: Run, home: Path, port: int | None) -> None:
    deadline = time.monotonic() + 10
    while _group_alive(run.pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _group_alive(run.pgid), "a process of the quickstart's process group is still running"
    left = _processes_mentioning(str(home))
    assert not left, "processes of the quickstart are still running:\n" + "\n".join(left)
    if port is not None:
        assert not _processes_mentioning(f"--port {port}"), "the vLLM server is still running"
        assert port_is_free(port), f"port {port} is still in use"


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("quickstart")
    home = root / "work"
    cache = root / "cache" / "quickstart.db"
    env = _env(home, cache)

    first = _run_script(env)
    (root / "first-run.log").write_text(first.output)
    print(f"\nquickstart first run: {first.seconds:.0f} s (exit code {first.rc})")
    assert first.rc == 0, f"the first run failed (exit code {first.rc}):\n{first.tail()}"
    with Store(cache, create=False) as store:
        generations_after_first = store.count_rows("generations")
    server_log = home / "logs" / "vllm-server.log"
    log_mtime = server_log.stat().st_mtime_ns if server_log.exists() else None

    second = _run_script(env)
    (root / "second-run.log").write_text(second.output)
    print(f"quickstart second run: {second.seconds:.0f} s (exit code {second.rc})")
    assert second.rc == 0, f"the second run failed (exit code {second.rc}):\n{second.tail()}"
    return {
        "root": root,
        "home": home,
        "cache": cache,
        "first": first,
        "second": second,
        "generations_after_first": generations_after_first,
        "server_log": server_log,
        "log_mtime": log_mtime,
    }


def test_first_run_shows_every_step(quickstart: dict) -> None:
    out = quickstart["first"].output
    for n in range(1, 7):
        assert f"== [{n}/6]" in out, f"step {n} has no header"
    assert "msta data synth" in out
    assert "starting vLLM" in out
    assert "quickstart done in" in out


def test_descriptions_from_the_real_model_with_provenance(quickstart: dict) -> None:
    home, cache = quickstart["home"], quickstart["cache"]
    names = _class_names(home)
    assert 2 <= len(names) <= 8
    with Store(cache, create=False) as store:
        assert store.integrity_check() == "ok"
        sets = store.list_sets(dataset=DATASET)
        assert len(sets) == 1, [s.label for s in sets]
        s = sets[0]
        assert s.backend == "openai"
        assert s.model == _expected_model_name()
        assert s.n == 2
        assert store.completed_classes(s.id) == set(names)

        prompt = store.get_prompt(s.prompt_fp)
        assert prompt is not None and prompt["name"] == "msta-general" and len(prompt["content"]) > 200

        descriptions = store.descriptions(s.id)
        assert set(descriptions) == set(names)
        for name in names:
            spatial, temporal = descriptions[name]["spatial"], descriptions[name]["temporal"]
            assert len(spatial) == 2 and len(temporal) == 2
            ok = store.generations(s.id, class_name=name, status="ok")
            assert len(ok) == 1
            gen = ok[0]
            assert (gen["backend"], gen["model"], gen["prompt_fp"]) == ("openai", s.model, s.prompt_fp)
            request = json.loads(gen["request"])
            assert request["seed"] == gen["seed"]
            assert f'"{name}"' in request["messages"][-1]["content"]
            # The stored sentences are the model's raw phrases in the prompt's sentence shapes.
            answer = json.loads(gen["raw_response"])
            assert [f"A video about {clean_phrase(p)}." for p in answer["spatial"]] == spatial
            for phrase, sentence in zip(answer["temporal"], temporal, strict=True):
                assert sentence.startswith(
                    f"A video of {name.lower()} generally involves the following step: "
                )
                assert sentence.endswith(f": {clean_phrase(phrase)}, which is a sub-step.")
            assert gen["completion_tokens"] > 0 and gen["latency_s"] > 0
        requests_sent = len(store.generations(s.id))

    # The answers came from the vLLM server the script started (its access log), and the
    # descriptions were exported as JSON for reading.
    log = quickstart["server_log"].read_text(errors="replace")
    assert log.count("POST /v1/chat/completions") >= requests_sent
    exported = json.loads((home / "report" / "descriptions.json").read_text())
    assert [c["name"] for c in exported["classes"]] == names


def test_audit_and_encode_ran(quickstart: dict) -> None:
    out, home = quickstart["first"].output, quickstart["home"]
    names = _class_names(home)
    assert re.search(rf"\d+ findings in \d+ of {len(names)} classes", out), "no audit summary in the output"
    html = (home / "report" / "audit.html").read_text()
    assert "<html" in html.lower() and names[0] in html
    m = re.search(r"encoded (\d+) descriptions \(\d+ already cached, (\d+) distinct\) with (\S+)", out)
    assert m, "no encode summary in the output"
    # All distinct texts were new (N=2 spatial + 2 temporal per class; classes may share a phrase).
    assert 2 * len(names) < int(m.group(1)) == int(m.group(2)) <= 4 * len(names)
    # Training used exactly these embeddings: the model's frozen text encoder is the same encoder.
    used = json.loads((_run_dir(home) / "classes.json").read_text())["descriptions"]
    assert used["encoder"] == m.group(3)
    assert f"encoder {m.group(3)}" in out


def _run_dir(home: Path) -> Path:
    runs = sorted((home / "runs").glob("synth-*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_training_beats_chance_and_plots_exist(quickstart: dict) -> None:
    home = quickstart["home"]
    names = _class_names(home)
    run = _run_dir(home)
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["global_step"] > 0
    result = json.loads((run / "eval_last.json").read_text())
    chance = 1 / len(names)
    assert result["top1"] > chance + 0.1, f"top-1 {result['top1']:.3f} is not above chance ({chance:.3f})"
    assert "validation accuracy: top-1" in quickstart["first"].output
    plots = [run / "training_curve.png", *run.glob("confusion_*.png")]
    assert len(plots) >= 2
    for p in plots:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
        assert str(p) in quickstart["first"].output  # the summary points at it


def test_nothing_left_running(quickstart: dict) -> None:
    first = quickstart["first"]
    port = _server_port(first.output)
    assert f"port {port} is free" in first.output
    _assert_nothing_left(first, quickstart["home"], port)
    _assert_nothing_left(quickstart["second"], quickstart["home"], None)


def test_second_run_reuses_everything_and_sends_nothing(quickstart: dict) -> None:
    first, second = quickstart["first"], quickstart["second"]
    out = second.output
    assert "no request to send, the LLM server is not started" in out
    assert "starting vLLM" not in out
    assert "reusing the finished run" in out
    assert "reusing" in out.split("== [2/6]")[1].split("== [3/6]")[0]
    with Store(quickstart["cache"], create=False) as store:
        assert store.count_rows("generations") == quickstart["generations_after_first"]
    assert quickstart["server_log"].stat().st_mtime_ns == quickstart["log_mtime"]
    assert second.seconds < first.seconds / 3, (
        f"the second run took {second.seconds:.0f} s, the first {first.seconds:.0f} s"
    )


def _vllm_server_of(parent: int) -> tuple[int, int] | None:
    """(pid, port) of the vLLM server process started by the quickstart process ``parent``."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and "vllm.entrypoints.openai.api_server" in args and "--port" in args:
            return int(proc.name), int(args[args.index("--port") + 1])
    return None


def test_interrupted_run_stops_the_server(tmp_path: Path) -> None:
    """Ctrl-C while the LLM server is starting: the script stops it and exits 130, nothing left."""
    home = tmp_path / "work"
    cache = tmp_path / "cache" / "interrupted.db"  # nothing cached: the server must start
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)],
        cwd=REPO,
        env=_env(home, cache, QUICKSTART_SKIP_SETUP="1"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server = None
    try:
        deadline = time.monotonic() + 300
        while server is None and proc.poll() is None and time.monotonic() < deadline:
            server = _vllm_server_of(proc.pid)  # the script execs the pipeline
            time.sleep(0.2)
        if server is None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate(timeout=60)
            pytest.fail(f"the vLLM server was not started:\n{output[-4000:]}")
        time.sleep(10)  # let it get going: engine processes, a listening socket
        assert proc.poll() is None, "the quickstart ended on its own"
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    pid, port = server
    assert proc.returncode == 130, f"exit code {proc.returncode}:\n{output[-4000:]}"
    assert "interrupted" in output
    assert not _group_alive(pid), "the vLLM server's process group is still running"
    _assert_nothing_left(Run(proc.returncode, output, 0.0, proc.pid), home, port)
