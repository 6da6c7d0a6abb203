"""Batch mode against a loopback Files/Batch API, through the real openai client and the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from descgen.batch import (
    MAX_REQUESTS,
    api_client,
    batch_lines,
    open_cache,
    parse_custom_id,
    split_lines,
    submit,
)
from descgen.plan import plan
from descgen.store import Store
from tests.descgen_batch.fake_batch import FakeBatchAPI
from tests.descgen_helpers import DESCGEN, REPO, run_cli

N = 2


def _classes(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "toy.csv"
    path.write_text("id,name\n" + "".join(f"{i},action number {i}\n" for i in range(count)))
    return path


def _gen(fake: FakeBatchAPI, tmp_path: Path, classes: Path, *extra: str):
    return run_cli(
        "generate", "--classes", str(classes), "--cache", str(tmp_path / "c.db"), "--model", "fake-model",
        "--base-url", fake.url, "--n", str(N), "--batch", *extra,
    )  # fmt: skip


def _collect(fake: FakeBatchAPI, tmp_path: Path, *extra: str):
    return run_cli("batch", "collect", "--cache", str(tmp_path / "c.db"), "--base-url", fake.url, *extra)


def _state(tmp_path: Path) -> tuple[int, dict[str, list[dict]], list[dict]]:
    """(classes complete, generations per class, batches) of the cache."""
    with Store(tmp_path / "c.db", readonly=True) as st:
        (dset,) = st.list_sets()
        rows: dict[str, list[dict]] = {}
        for g in st.generations(dset.id):
            rows.setdefault(g["class_name"], []).append(g)
        return len(st.completed_classes(dset.id)), rows, st.list_batches()


def test_submit_records_batch_and_lines_match_the_online_request(
    fake_batch: FakeBatchAPI, tmp_path: Path
) -> None:
    classes = _classes(tmp_path, 5)
    r = _gen(fake_batch, tmp_path, classes)
    assert r.returncode == 0, r.output
    assert "1 batches submitted" in r.stdout
    _, _, batches = _state(tmp_path)
    (b,) = batches
    assert b["kind"] == "api" and b["input_file_id"] in fake_batch.files and b["requests"] == 5
    assert fake_batch.batches[b["id"]]["endpoint"] == "/v1/chat/completions"
    assert fake_batch.batches[b["id"]]["completion_window"] == "24h"
    data = fake_batch.files[b["input_file_id"]]
    assert data["purpose"] == "batch"
    lines = [json.loads(x) for x in data["data"].decode().splitlines()]
    p = plan(classes_file=classes, cache=tmp_path / "c.db", model="fake-model", n=N)
    assert [parse_custom_id(x["custom_id"]) for x in lines] == [
        (p.set_id, 0, f"action number {i}") for i in range(5)
    ]
    body = lines[0]["body"]
    assert (
        body["response_format"]["type"] == "json_schema" and body["response_format"]["json_schema"]["strict"]
    )
    assert body["model"] == "fake-model" and body["seed"] == p.params["seed"]
    # submitting again while the batch is in flight sends nothing
    r = _gen(fake_batch, tmp_path, classes)
    assert "0 batches submitted" in r.stdout and len(fake_batch.batches) == 1


def test_large_jobs_are_split(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    p = plan(classes_file=_classes(tmp_path, 7), cache=tmp_path / "c.db", model="fake-model", n=N)
    lines = batch_lines(p)
    assert [len(c) for c in split_lines(lines, max_requests=3)] == [3, 3, 1]
    size = len(lines[0].line)
    assert [len(c) for c in split_lines(lines, max_bytes=2 * size + 10)] == [2, 2, 2, 1]
    assert len(split_lines(lines)) == 1 and MAX_REQUESTS == 50_000
    with open_cache(p.cache, create=True) as store:
        ids = submit(p, api_client(fake_batch.url), store, max_requests=3)
    assert len(ids) == 3 and [b["requests"] for b in _state(tmp_path)[2]] == [3, 3, 1]


def test_status_delayed_completion_collect_and_collect_again(
    fake_batch: FakeBatchAPI, tmp_path: Path
) -> None:
    fake_batch.delay = 60
    classes = _classes(tmp_path, 4)
    assert _gen(fake_batch, tmp_path, classes).returncode == 0
    r = run_cli("batch", "status", "--cache", str(tmp_path / "c.db"), "--base-url", fake_batch.url)
    assert "in_progress" in r.stdout and "0/4 done" in r.stdout, r.output
    r = _collect(fake_batch, tmp_path)
    assert r.returncode == 1 and "1 pending" in r.stdout
    assert _state(tmp_path)[0] == 0
    fake_batch.finish_all()
    r = _collect(fake_batch, tmp_path)
    assert r.returncode == 0, r.output
    assert "1 batches collected" in r.stdout and "4 lines stored (4 ok" in r.stdout
    complete, rows, batches = _state(tmp_path)
    assert complete == 4 and all(len(v) == 1 for v in rows.values())
    g = rows["action number 0"][0]
    assert g["batch_id"] == batches[0]["id"] and parse_custom_id(g["custom_id"])[2] == "action number 0"
    assert json.loads(g["batch_line"])["custom_id"] == g["custom_id"]
    assert g["prompt_tokens"] > 0 and g["completion_tokens"] > 0 and g["backend"] == "openai"
    assert batches[0]["collected_at"] is not None and batches[0]["status"] == "completed"
    downloads = fake_batch.downloads
    r = _collect(fake_batch, tmp_path)  # nothing left to collect
    assert r.returncode == 0 and "0 batches collected" in r.stdout and fake_batch.downloads == downloads
    r = run_cli("batch", "status", "--cache", str(tmp_path / "c.db"), "--base-url", fake_batch.url)
    assert "completed" in r.stdout and "4/4 done" in r.stdout and "collected" in r.stdout
    with Store(tmp_path / "c.db", readonly=True) as st:
        assert st.count_rows("generations") == 4 and st.count_rows("descriptions") == 4 * 2 * N


def test_partial_failures_invalid_retried_online_malformed_line(
    fake_batch: FakeBatchAPI, tmp_path: Path
) -> None:
    fake_batch.line_script = {
        "action number 1": "fail",
        "action number 2": "schema",
        "action number 3": "garbage",
    }
    classes = _classes(tmp_path, 5)
    assert _gen(fake_batch, tmp_path, classes, "--wait").returncode == 1
    complete, rows, _ = _state(tmp_path)
    assert complete == 3  # 0, 4, and 2 after its online retry
    assert fake_batch.chat_log == ["action number 2"]
    st2 = [g["status"] for g in rows["action number 2"]]
    assert st2 == ["invalid", "ok"]
    retry = rows["action number 2"][1]
    assert retry["batch_id"] is None and retry["attempt"] == 2 and retry["seed"] == 1
    assert [g["status"] for g in rows["action number 1"]] == ["error"]
    assert "HTTP 500" in rows["action number 1"][0]["error"]
    assert "no result" in rows["action number 3"][0]["error"]
    # the failed classes go into a new batch; once it is collected the set is complete
    fake_batch.line_script = {}
    r = _gen(fake_batch, tmp_path, classes, "--wait")
    assert r.returncode == 0, r.output
    complete, rows, batches = _state(tmp_path)
    assert complete == 5 and len(batches) == 2 and batches[1]["requests"] == 2


def test_invalid_with_max_invalid_zero_is_not_retried(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    fake_batch.line_script = {"action number 0": "malformed"}
    r = _gen(fake_batch, tmp_path, _classes(tmp_path, 2), "--max-invalid", "0", "--wait")
    assert r.returncode == 1 and "1 classes incomplete" in r.stdout
    assert fake_batch.chat_log == []


def test_expired_batch_keeps_what_finished(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    fake_batch.expire = True
    classes = _classes(tmp_path, 6)
    r = _gen(fake_batch, tmp_path, classes, "--wait")
    assert r.returncode == 1
    complete, rows, batches = _state(tmp_path)
    assert complete == 3 and batches[0]["status"] == "expired"
    assert sum(1 for v in rows.values() if "status expired" in (v[0]["error"] or "")) == 3
    fake_batch.expire = False
    assert _gen(fake_batch, tmp_path, classes, "--wait").returncode == 0
    assert _state(tmp_path)[0] == 6


def test_cancel(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    fake_batch.delay = 60
    assert _gen(fake_batch, tmp_path, _classes(tmp_path, 3)).returncode == 0
    (b,) = _state(tmp_path)[2]
    r = run_cli("batch", "cancel", b["id"], "--cache", str(tmp_path / "c.db"), "--base-url", fake_batch.url)
    assert r.returncode == 0 and "cancelled" in r.stdout
    r = _collect(fake_batch, tmp_path)
    assert r.returncode == 1 and "3 classes incomplete" in r.stdout
    r = run_cli(
        "batch", "cancel", "batch-9999", "--cache", str(tmp_path / "c.db"), "--base-url", fake_batch.url
    )
    assert r.returncode == 2 and "no batch" in r.stderr


def test_collector_killed_half_way_then_collected_again(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    """SIGKILL while the collector retries an invalid answer online; the second collect completes."""
    classes = _classes(tmp_path, 7)
    p = plan(classes_file=classes, cache=tmp_path / "c.db", model="fake-model", n=N)
    fake_batch.line_script = {"action number 1": "schema", "action number 5": "schema"}
    fake_batch.chat_script = {"action number 1": ["hang", "ok"]}
    with open_cache(p.cache, create=True) as store:
        submit(p, api_client(fake_batch.url), store, max_requests=4)  # two batches: 4 + 3
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [
        *DESCGEN,
        "batch",
        "collect",
        "--cache",
        str(p.cache),
        "--base-url",
        fake_batch.url,
        "--timeout",
        "60",
    ]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while "action number 1" not in fake_batch.chat_log and time.time() < deadline:
            time.sleep(0.05)
        assert fake_batch.chat_log == ["action number 1"], (
            proc.stderr.read() if proc.poll() is not None else ""
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    complete, rows, batches = _state(tmp_path)
    assert complete == 3 and all(b["collected_at"] is None for b in batches)
    r = _collect(fake_batch, tmp_path)
    assert r.returncode == 0, r.output
    assert "4 already stored" in r.stdout and "3 lines stored" in r.stdout
    complete, rows, batches = _state(tmp_path)
    assert complete == 7 and all(b["collected_at"] for b in batches)
    assert [g["status"] for g in rows["action number 1"]] == ["invalid", "ok"]
    assert [g["status"] for g in rows["action number 5"]] == ["invalid", "ok"]
    with Store(p.cache, readonly=True) as st:
        assert st.count_rows("descriptions") == 7 * 2 * N
        ok = st.generations(p.set_id, status="ok")
        assert len(ok) == 7 and len({g["class_name"] for g in ok}) == 7
    assert _collect(fake_batch, tmp_path).stdout.startswith("0 batches collected")


def test_batch_needs_the_openai_backend_and_a_cache(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    classes = _classes(tmp_path, 2)
    r = run_cli("generate", "--classes", str(classes), "--cache", str(tmp_path / "c.db"), "--backend", "vllm",
                   "--model", "m", "--batch")  # fmt: skip
    assert r.returncode == 2 and "--batch-file" in r.stderr
    r = run_cli("batch", "status", "--cache", str(tmp_path / "none.db"))
    assert r.returncode == 2 and "no cache" in r.stderr
    r = run_cli("generate", "--classes", str(classes), "--cache", str(tmp_path / "c.db"), "--wait")
    assert r.returncode == 2 and "--wait needs --batch" in r.stderr


@pytest.mark.parametrize("as_json", [False, True])
def test_dry_run_estimates_tokens_and_batch_cost(tmp_path: Path, as_json: bool) -> None:
    classes = _classes(tmp_path, 10)
    args = ["generate", "--classes", str(classes), "--cache", str(tmp_path / "c.db"), "--dry-run"]
    r = run_cli(*args, *(["--json"] if as_json else []))
    assert r.returncode == 0, r.output
    assert not (tmp_path / "c.db").exists()
    if as_json:
        est = json.loads(r.stdout)["estimate"]
        assert est["requests"] == 10 and est["prompt_tokens"] > 10 * 50
        assert 0 < est["completion_tokens_max"] <= 10 * 400
        assert est["batch_cost_usd"] == pytest.approx(est["cost_usd"] * 0.5, abs=1e-6)
    else:
        assert "estimate" in r.stdout and "batch $" in r.stdout and "x0.5" in r.stdout
