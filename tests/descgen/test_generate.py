"""descgen generate against a real loopback HTTP server spoken to by the real openai client."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from descgen.generate import GenerateInputError, generate
from descgen.prompts import load_prompt
from descgen.store import Store
from tests.descgen.fake_openai import FakeOpenAI, phrases_for
from tests.descgen_helpers import DESCGEN, REPO


def _classes(tmp_path: Path, count: int, name: str = "toy") -> Path:
    path = tmp_path / f"{name}.csv"
    path.write_text("id,name\n" + "".join(f"{i},action number {i}\n" for i in range(count)))
    return path


def _run(fake_openai: FakeOpenAI, tmp_path: Path, classes: Path, **kw):
    args = dict(
        classes_file=classes,
        cache=tmp_path / "cache.db",
        base_url=fake_openai.url,
        model="fake-model",
        concurrency=4,
        timeout=5.0,
        max_attempts=3,
    )
    args.update(kw)
    return generate(**args)


def _env(fake_openai: FakeOpenAI) -> dict[str, str]:
    env = dict(os.environ, OPENAI_API_KEY=fake_openai.api_key, PYTHONPATH=str(REPO))
    env.pop("COLUMNS", None)
    return env


def test_generates_every_class_and_rerun_sends_nothing(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    classes = _classes(tmp_path, 10)
    s = _run(fake_openai, tmp_path, classes, n=3)
    assert (s.done, s.cached, s.failed, s.exit_code) == (10, 0, 0, 0)
    assert fake_openai.count() == 10
    assert s.prompt_tokens > 0 and s.completion_tokens > 0
    assert {e["model"] for e in fake_openai.entries()} == {"fake-model"}
    with Store(tmp_path / "cache.db") as st:
        (dset,) = st.list_sets(dataset="toy")
        assert (dset.backend, dset.model, dset.n) == ("openai", "fake-model", 3)
        assert dset.params["temperature"] == 0.7 and dset.params["seed"] == 0
        descs = st.descriptions(dset.id)
        assert len(descs) == 10
        expected = phrases_for("action number 4", 3)
        assert descs["action number 4"]["spatial"] == [f"A video about {p}." for p in expected["spatial"]]
        assert descs["action number 4"]["temporal"][2] == (
            "A video of action number 4 generally involves the following step: "
            f"{expected['temporal'][2]}, which is a sub-step."
        )
        prompt = load_prompt()
        stored = st.get_prompt(prompt.fingerprint)
        assert stored is not None and stored["content"] == prompt.canonical
        gens = st.generations(dset.id)
        assert len(gens) == 10 and {g["status"] for g in gens} == {"ok"}
        assert all(g["raw_response"].startswith('{"spatial"') for g in gens)
    fake_openai.reset_log()
    again = _run(fake_openai, tmp_path, classes, n=3)
    assert (again.done, again.cached, again.failed) == (0, 10, 0)
    assert fake_openai.count() == 0
    # Another N is another set: everything is requested again.
    other = _run(fake_openai, tmp_path, classes, n=2)
    assert other.done == 10 and fake_openai.count() == 10


def test_concurrency_is_bounded(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    fake_openai.latency = 0.15
    s = _run(fake_openai, tmp_path, _classes(tmp_path, 12), concurrency=3)
    assert s.done == 12
    assert fake_openai.max_in_flight == 3


def test_failures_are_retried_recorded_and_reported(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    names = [f"action number {i}" for i in range(8)]
    fake_openai.script(names[0], "429:1", "ok")  # rate limited once, must wait >= 1 s
    fake_openai.script(names[1], "500", "503", "ok")  # recovers on the third attempt
    fake_openai.script(names[2], "500")  # never recovers
    fake_openai.script(names[3], "hang")  # always times out
    fake_openai.script(names[4], "malformed", "ok")  # invalid once, then fine
    fake_openai.script(names[5], "schema")  # always invalid
    fake_openai.script(names[6], "dup", "ok")
    fake_openai.hang_s = 10
    out = io.StringIO()
    s = _run(
        fake_openai, tmp_path, _classes(tmp_path, 8), timeout=0.5, max_attempts=3, max_invalid=2, out=out
    )
    assert s.exit_code == 1
    assert (s.done, s.failed) == (5, 3)
    assert set(s.failures) == {names[2], names[3], names[5]}
    assert "after 3 attempts" in s.failures[names[2]] and "HTTP 500" in s.failures[names[2]]
    assert "timed out" in s.failures[names[3]]
    assert "invalid answer" in s.failures[names[5]] and "expected 2 phrases" in s.failures[names[5]]
    assert names[2] in out.getvalue() and "3 classes incomplete" in out.getvalue()

    first, second = fake_openai.entries(names[0])
    assert second["t"] - first["t"] >= 1.0  # Retry-After honoured
    assert fake_openai.count(names[1]) == 3
    assert fake_openai.count(names[2]) == 3  # capped attempts
    assert fake_openai.count(names[3]) == 3
    assert fake_openai.count(names[5]) == 3  # 1 + max_invalid re-requests
    seeds = [e["seed"] for e in fake_openai.entries(names[5])]
    assert seeds == [0, 1, 2]  # each re-request after an invalid answer uses a new seed
    assert fake_openai.count(names[7]) == 1

    with Store(tmp_path / "cache.db") as st:
        (dset,) = st.list_sets()
        assert st.completed_classes(dset.id) == set(names) - {names[2], names[3], names[5]}
        by_class = {n: st.generations(dset.id, class_name=n) for n in names}
        assert [g["status"] for g in by_class[names[4]]] == ["invalid", "ok"]
        assert by_class[names[4]][0]["raw_response"].startswith('{"spatial": ["unterminated')
        assert "not valid JSON" in by_class[names[4]][0]["error"]
        assert [g["status"] for g in by_class[names[5]]] == ["invalid"] * 3
        assert [g["status"] for g in by_class[names[2]]] == ["error"]
        assert "repeats" in by_class[names[6]][0]["error"]

    # The run is resumable: once the server behaves, only the three missing classes are sent.
    for name in (names[2], names[3], names[5]):
        fake_openai.script(name, "ok")
    fake_openai.reset_log()
    s2 = _run(fake_openai, tmp_path, _classes(tmp_path, 8))
    assert (s2.done, s2.cached, s2.failed, s2.exit_code) == (3, 5, 0, 0)
    assert {e["class_name"] for e in fake_openai.entries()} == {names[2], names[3], names[5]}


def test_wrong_key_is_not_retried_and_stops_the_run(
    fake_openai: FakeOpenAI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-1234567890")
    s = _run(fake_openai, tmp_path, _classes(tmp_path, 20), concurrency=1)
    assert s.failed == 20 and s.exit_code == 1
    assert fake_openai.count() == 1  # the first 401 says every other request would fail too
    assert s.requests == 1
    assert all("HTTP 401" in r for r in s.failures.values())
    assert "sk-wrong" not in " ".join(s.failures.values())


def test_unreachable_server_fails_fast(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijkl")
    t0 = time.monotonic()
    s = generate(
        classes_file=_classes(tmp_path, 30),
        cache=tmp_path / "c.db",
        base_url=f"http://127.0.0.1:{port}/v1",
        concurrency=2,
        max_attempts=2,
    )
    assert time.monotonic() - t0 < 20
    assert (s.done, s.failed, s.exit_code) == (0, 30, 1)
    assert s.requests <= 4  # two classes tried twice each, the rest not sent
    assert all("cannot connect to the server" in r for r in s.failures.values())
    with Store(tmp_path / "c.db") as st:
        assert len(st.generations(status="error")) == 30  # every class has its error row


def test_key_never_written_or_printed(fake_openai: FakeOpenAI, tmp_path: Path, descgen_cli) -> None:
    classes = _classes(tmp_path, 6)
    fake_openai.script("action number 0", "500")  # the error body repeats the Authorization header
    fake_openai.script("action number 5", "401")  # so does this one (late, so it does not stop the run)
    fake_openai.script("action number 2", "malformed", "ok")
    cache = tmp_path / "cache.db"
    args = ["generate", "--classes", str(classes), "--cache", str(cache), "--base-url", fake_openai.url]
    r = descgen_cli(*args, "--model", "fake-model", "--max-attempts", "2", "--concurrency", "2")
    assert r.returncode == 1, r.stderr
    assert "toy: 6 classes | 4 done, 0 cached, 2 failed" in r.stdout
    assert "HTTP 500" in r.stderr and "Traceback" not in r.stderr
    blob = b"".join(p.read_bytes() for p in tmp_path.glob("cache.db*"))
    with Store(cache) as st:
        assert any("Bearer ***" in (g["error"] or "") for g in st.generations())
    for text in (r.stdout, r.stderr, blob.decode("utf-8", "replace")):
        assert fake_openai.api_key not in text
    assert fake_openai.api_key.encode() not in blob


def test_force_replaces_without_duplicates(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    classes = _classes(tmp_path, 4)
    _run(fake_openai, tmp_path, classes)
    fake_openai.reset_log()
    s = _run(fake_openai, tmp_path, classes, force=True)
    assert (s.done, s.cached) == (4, 0) and fake_openai.count() == 4
    with Store(tmp_path / "cache.db") as st:
        (dset,) = st.list_sets()
        assert st.count_rows("descriptions") == 4 * 2 * 2
        statuses = sorted(g["status"] for g in st.generations(dset.id))
        assert statuses == ["ok"] * 4 + ["superseded"] * 4


def test_dry_run_writes_nothing(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    classes = _classes(tmp_path, 5)
    out = io.StringIO()
    s = _run(fake_openai, tmp_path, classes, dry_run=True, out=out)
    assert s.dry_run and s.to_request == [f"action number {i}" for i in range(5)]
    assert not (tmp_path / "cache.db").exists()
    assert fake_openai.count() == 0
    assert "to send   5 requests" in out.getvalue() and "action number 3" in out.getvalue()
    _run(fake_openai, tmp_path, _classes(tmp_path, 3, name="first3"), dataset="toy")  # cache 3 of the 5
    fake_openai.reset_log()
    before = (tmp_path / "cache.db").read_bytes()
    s = _run(fake_openai, tmp_path, classes, dry_run=True, out=io.StringIO())
    assert (s.cached, len(s.to_request)) == (3, 2)
    assert fake_openai.count() == 0
    assert (tmp_path / "cache.db").read_bytes() == before


def test_dry_run_json_is_the_plan(fake_openai: FakeOpenAI, tmp_path: Path, descgen_cli) -> None:
    import json

    classes = _classes(tmp_path, 4)
    _run(fake_openai, tmp_path, _classes(tmp_path, 1, name="first"), dataset="toy")  # cache class 0
    fake_openai.reset_log()
    before = (tmp_path / "cache.db").read_bytes()
    args = [
        "generate",
        "--classes",
        str(classes),
        "--cache",
        str(tmp_path / "cache.db"),
        "--dry-run",
        "--json",
    ]
    r = descgen_cli(*args, "--model", "fake-model", "--n", "2", "--seed", "3")
    assert r.returncode == 0, r.output
    plan = json.loads(r.stdout)  # one JSON object, nothing else on stdout
    prompt = load_prompt()
    assert plan["dataset"] == "toy" and plan["backend"] == "openai" and plan["model"] == "fake-model"
    assert plan["prompt"] == {"name": prompt.label, "fingerprint": prompt.fingerprint}
    assert plan["n"] == 2 and plan["params"]["seed"] == 3
    assert (plan["classes"], plan["complete"], plan["to_send"]) == (4, 0, 4)  # another seed: another set
    r = descgen_cli(*args, "--model", "fake-model")
    plan = json.loads(r.stdout)
    assert (plan["classes"], plan["complete"], plan["to_send"]) == (4, 1, 3)
    assert plan["to_send_classes"] == [f"action number {i}" for i in (1, 2, 3)]
    with Store(tmp_path / "cache.db", readonly=True) as st:
        (dset,) = st.list_sets()
    assert plan["set_id"] == dset.id
    assert fake_openai.count() == 0 and (tmp_path / "cache.db").read_bytes() == before
    r = descgen_cli("generate", "--classes", str(classes), "--json")
    assert r.returncode == 2 and r.stderr == "error: --json needs --dry-run (it prints the plan)\n"


def test_user_errors_and_interrupts_end_in_one_line(monkeypatch: pytest.MonkeyPatch, descgen_cli) -> None:
    import descgen.plan
    from descgen.errors import DescgenError

    def fail(**_kw):
        raise DescgenError("the cache is busy", code=3)

    monkeypatch.setattr(descgen.plan, "plan", fail)
    r = descgen_cli("generate", "--dataset", "k400")
    assert (r.returncode, r.stdout, r.stderr) == (3, "", "error: the cache is busy\n")

    def interrupt(**_kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(descgen.plan, "plan", interrupt)
    r = descgen_cli("generate", "--dataset", "k400")
    assert r.returncode == 130 and r.stderr.startswith("interrupted") and "Traceback" not in r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dataset", "k700"], "unknown dataset 'k700'"),
        (["--dataset", "k400", "--data-dir", "{tmp}/nowhere"], "not found at"),
        (["--classes", "{tmp}/missing.csv"], "file not found"),
        (["--classes", "{tmp}/dup.csv"], "duplicate class name"),
        (["--classes", "{tmp}/gap.csv"], "id 1 is missing"),
        (["--classes", "{tmp}/empty.txt"], "is empty"),
        (["--classes", "{tmp}/ok.txt", "--prompt", "nope"], "unknown prompt"),
        (["--classes", "{tmp}/ok.txt", "--n", "0"], "--n must be between"),
        (["--classes", "{tmp}/ok.txt", "--backend", "nope"], "unknown backend"),
        (["--classes", "{tmp}/ok.txt", "--backend", "vllm"], "needs --model"),
        (["--classes", "{tmp}/ok.txt", "--vllm-opt", "novalue"], "expected KEY=VALUE"),
        (["--classes", "{tmp}/ok.txt", "--no-base-url"], "OPENAI_API_KEY"),
        (["--classes", "{tmp}/ok.txt", "--temperature", "5"], "--temperature must be"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], message: str, descgen_cli
) -> None:
    (tmp_path / "dup.csv").write_text("id,name\n0,a\n1,a\n")
    (tmp_path / "gap.csv").write_text("id,name\n0,a\n2,b\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "ok.txt").write_text("a\nb\n")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--no-base-url" in args:
        args.remove("--no-base-url")
    else:
        args += ["--base-url", "http://127.0.0.1:9/v1"]
    cache = tmp_path / "sub" / "cache.db"
    r = descgen_cli("generate", *args, "--cache", str(cache))
    assert r.returncode == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert not cache.exists() and not cache.parent.exists()


def test_bad_input_in_a_real_process(tmp_path: Path) -> None:
    cache = tmp_path / "cache.db"
    r = subprocess.run(
        [*DESCGEN, "generate", "--dataset", "nope", "--cache", str(cache)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: unknown dataset 'nope': built-in datasets are k400, k600, hmdb51, ucf101, ssv2; "
        "use --classes FILE for any other list"
    ]
    assert not cache.exists()


def test_generate_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys, descgen.cli, descgen.cli_generate, descgen.generate, descgen.backends.openai_backend;"
        "print(sorted(m for m in ('torch', 'open_clip', 'msta') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stderr


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    count = 60
    classes = _classes(tmp_path, count)
    cache = tmp_path / "cache.db"
    fake_openai.latency = 0.1
    cmd = [
        *DESCGEN,
        "generate",
        "--classes",
        str(classes),
        "--cache",
        str(cache),
        "--base-url",
        fake_openai.url,
    ]
    cmd += ["--model", "fake-model", "--concurrency", "4"]
    proc = subprocess.Popen(cmd, env=_env(fake_openai), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while fake_openai.count() < 20 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    with Store(cache) as st:
        (dset,) = st.list_sets()
        done_before = st.completed_classes(dset.id)
        assert st.integrity_check() == "ok"
    assert 0 < len(done_before) < count
    # Every committed class is whole: 2 spatial + 2 temporal sentences, nothing half-written.
    conn = sqlite3.connect(cache)
    per_class = dict(conn.execute("SELECT class_name, COUNT(*) FROM descriptions GROUP BY class_name"))
    conn.close()
    assert set(per_class) == done_before and set(per_class.values()) == {4}

    fake_openai.reset_log()
    fake_openai.latency = 0.0
    r = subprocess.run(cmd, env=_env(fake_openai), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"{count - len(done_before)} done, {len(done_before)} cached, 0 failed" in r.stdout
    all_names = {f"action number {i}" for i in range(count)}
    requested = [e["class_name"] for e in fake_openai.entries()]
    assert sorted(requested) == sorted(all_names - done_before)  # only what was missing, once each

    conn = sqlite3.connect(cache)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ok_rows = conn.execute(
        "SELECT class_name, COUNT(*) FROM generations WHERE status = 'ok' GROUP BY class_name"
    ).fetchall()
    dups = conn.execute(
        "SELECT COUNT(*) FROM (SELECT set_id, class_name, kind, idx FROM descriptions "
        "GROUP BY set_id, class_name, kind, idx HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    total = conn.execute("SELECT COUNT(*) FROM descriptions").fetchone()[0]
    conn.close()
    assert {name for name, _ in ok_rows} == all_names
    assert all(c == 1 for _, c in ok_rows)
    assert dups == 0 and total == count * 4


def test_input_error_type_from_python() -> None:
    with pytest.raises(GenerateInputError, match="no class list given"):
        generate()


def test_prompts_diff_counts_classes_per_version(
    fake_openai: FakeOpenAI, tmp_path: Path, descgen_cli
) -> None:
    classes = _classes(tmp_path, 5)
    _run(fake_openai, tmp_path, classes, prompt="msta-general-v1")
    _run(fake_openai, tmp_path, _classes(tmp_path, 2, name="toy2"), prompt="msta-terse-v1")
    cache = tmp_path / "cache.db"
    with Store(cache) as st:
        stored = {p["name"] for p in st.list_prompts()}
    assert stored == {"msta-general", "msta-terse"}
    r = descgen_cli("prompts", "diff", "msta-general-v1", "msta-terse-v1", "--cache", str(cache))
    assert r.returncode == 0, r.output
    assert "+sampling.temperature = 0.4" in r.output
    assert "msta-general-v1: 5 classes with descriptions in 1 sets" in r.output
    assert "msta-terse-v1: 2 classes with descriptions in 1 sets" in r.output
    # The terse prompt's user message names the class differently; the server still saw it.
    assert {e["class_name"] for e in fake_openai.entries()} >= {"action number 0", "action number 1"}


def test_datasets_command(shared_data: Path, tmp_path: Path, descgen_cli) -> None:
    r = descgen_cli("datasets", "--data-dir", str(shared_data))
    assert r.returncode == 0, r.output
    for name, count in (("k400", 400), ("k600", 600), ("hmdb51", 51), ("ucf101", 101), ("ssv2", 174)):
        assert f"{name:<8} {count} classes" in r.output
    r = descgen_cli("datasets", "--data-dir", str(tmp_path))
    assert r.returncode == 0 and r.output.count("not found") == 5


# ---------------------------------------------------------------------- validation and backend pieces


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (None, "empty answer"),
        ("{not json", "not valid JSON"),
        ('["a", "b"]', "expected a JSON object"),
        ('{"spatial": ["a red ball", "green grass"]}', "missing key 'temporal'"),
        ('{"spatial": ["a red ball"], "temporal": ["kick it", "run"]}', "spatial: expected 2 phrases, got 1"),
        ('{"spatial": ["a red ball", "  "], "temporal": ["kick it", "run"]}', "spatial[1] is empty"),
        (
            '{"spatial": ["a red ball", "A  RED ball."], "temporal": ["kick it", "run"]}',
            "spatial[1] repeats spatial[0]",
        ),
        (
            '{"spatial": ["a red ball", "' + "x" * 200 + '"], "temporal": ["kick it", "run"]}',
            "spatial[1] is too long",
        ),
        ('{"spatial": ["a red ball", 3], "temporal": ["kick it", "run"]}', "spatial.1"),
        ('{"spatial": ["a", "b"], "temporal": ["c", "d"], "extra": 1}', "unexpected key 'extra'"),
    ],
)
def test_validation_reasons(text: str | None, reason: str) -> None:
    from descgen.validate import InvalidAnswer, Limits, validate_answer

    with pytest.raises(InvalidAnswer) as info:
        validate_answer(text, Limits(n=2, min_chars=1, max_chars=160))
    assert reason in str(info.value)


def test_validation_cleans_phrases() -> None:
    from descgen.validate import Limits, validate_answer

    a = validate_answer(
        '{"spatial": [" a red  ball. ", "green grass"], "temporal": ["kick it.", "run after it"]}',
        Limits(n=2),
    )
    assert a.spatial == ["a red ball", "green grass"] and a.temporal == ["kick it", "run after it"]


def test_retry_after_parsing_and_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    from email.utils import formatdate

    from descgen.backends.openai_backend import OpenAIBackend, parse_retry_after

    assert parse_retry_after({"retry-after": "3"}) == 3.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert 8 <= parse_retry_after({"retry-after": formatdate(time.time() + 10, usegmt=True)}) <= 10.5
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-abcdefghijkl")
    be = OpenAIBackend(model="m", backoff_base=0.5, backoff_max=4.0)
    assert all(0.25 <= be._backoff(1, None) <= 0.5 for _ in range(50))
    assert all(2.0 <= be._backoff(8, None) <= 4.0 for _ in range(50))  # capped
    assert all(7.0 <= be._backoff(1, 7.0) <= 7.2 for _ in range(50))  # never sooner than Retry-After
    assert "sk-test" not in repr(be)


def test_missing_key_and_scrubbing(monkeypatch: pytest.MonkeyPatch) -> None:
    from descgen.backends import BackendError, get_backend, scrub_secrets

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(BackendError, match="OPENAI_API_KEY"):
        get_backend("openai", model="m")
    assert get_backend("openai", model="m", base_url="http://127.0.0.1:9/v1").model == "m"  # placeholder key
    with pytest.raises(BackendError, match="unknown backend"):
        get_backend("nope")
    monkeypatch.setenv("OPENAI_API_KEY", "my-very-secret-value")
    text = "failed with my-very-secret-value; Authorization: Bearer abc.def; sk-proj-ABCDEFGH1234; http://u:pw@host/"
    clean = scrub_secrets(text)
    assert clean is not None
    for secret in ("my-very-secret-value", "abc.def", "sk-proj-ABCDEFGH1234", ":pw@"):
        assert secret not in clean
    assert scrub_secrets("a sk-proj-ABCDEFGH1234 answer", patterns=False) == "a sk-proj-ABCDEFGH1234 answer"


def test_a_file_that_is_not_a_cache_is_refused(fake_openai: FakeOpenAI, tmp_path: Path) -> None:
    cache = tmp_path / "notes.db"
    cache.write_text("these are my notes, not a database\n" * 20)
    before = cache.read_bytes()
    with pytest.raises(GenerateInputError, match="not a usable SQLite cache"):
        _run(fake_openai, tmp_path, _classes(tmp_path, 2), cache=cache)
    assert cache.read_bytes() == before and fake_openai.count() == 0


class EchoBackend:
    """A backend that answers every request with valid phrases (registered by name in a test)."""

    name = "echo"
    default_model = "echo-1"
    model_hint = ""
    option_names = ("concurrency",)
    made: list[EchoBackend] = []

    def __init__(self, model: str, concurrency: int = 1) -> None:
        self.model, self.concurrency, self.sent = model, concurrency, 0
        EchoBackend.made.append(self)

    @classmethod
    def from_options(cls, model: str, options: dict) -> EchoBackend:
        return cls(model, **options)

    def run(self, requests, on_done) -> None:
        import json

        from descgen.backends import Response

        for r in requests:
            self.sent += 1
            on_done(Response(key=r.key, text=json.dumps(phrases_for(r.key, 2)), prompt_tokens=5))


def test_a_registered_backend_is_used_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from descgen import backends

    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    backends.register_backend("echo", f"{__name__}:EchoBackend")
    EchoBackend.made.clear()
    classes = _classes(tmp_path, 3)
    s = generate(classes_file=classes, cache=tmp_path / "c.db", backend="echo", concurrency=5, base_url="x")
    assert (s.done, s.failed, s.backend, s.model, s.prompt_tokens) == (3, 0, "echo", "echo-1", 15)
    (be,) = EchoBackend.made
    assert (be.concurrency, be.sent) == (5, 3)  # only the options it takes reach it
    with Store(tmp_path / "c.db") as st:
        (dset,) = st.list_sets()
        assert (dset.backend, dset.model) == ("echo", "echo-1") and len(st.completed_classes(dset.id)) == 3


def test_vllm_backend_without_vllm_says_how_to_install(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed in this environment")
    classes = _classes(tmp_path, 2)
    with pytest.raises(GenerateInputError, match="pip install"):
        generate(classes_file=classes, cache=tmp_path / "c.db", backend="vllm", model="some/model")
    assert not (tmp_path / "c.db").exists()


def test_prompts_show_from_the_cache_by_fingerprint(
    fake_openai: FakeOpenAI, tmp_path: Path, descgen_cli
) -> None:
    src = Path(load_prompt("msta-terse-v1").source).read_text()
    custom = tmp_path / "custom.toml"
    custom.write_text(src.replace('name = "msta-terse"', 'name = "my-prompt"'))
    _run(fake_openai, tmp_path, _classes(tmp_path, 2), prompt=str(custom))
    fp = load_prompt(str(custom)).fingerprint
    custom.unlink()  # the cache keeps the full text
    r = descgen_cli("prompts", "show", fp[:12], "--cache", str(tmp_path / "cache.db"))
    assert r.returncode == 0, r.output
    assert f"sha256 {fp}" in r.output and 'name = "my-prompt"' in r.output
    r = descgen_cli("prompts", "show", "ffffffffffff", "--cache", str(tmp_path / "cache.db"))
    assert r.returncode == 2 and "no prompt" in r.output
