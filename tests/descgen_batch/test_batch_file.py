"""Offline batch files: ``generate --batch-file`` writes the lines vLLM's run_batch reads, and
``batch collect --file`` ingests the lines it writes (the Batch API's line format)."""

from __future__ import annotations

import json
from pathlib import Path

from descgen.batch import parse_custom_id
from descgen.store import Store
from tests.descgen_batch.fake_batch import _result_line
from tests.descgen_helpers import run_cli

N = 2


def _classes(tmp_path: Path, count: int) -> Path:
    path = tmp_path / "toy.csv"
    path.write_text("id,name\n" + "".join(f"{i},action number {i}\n" for i in range(count)))
    return path


def _write(tmp_path: Path, classes: Path):
    return run_cli(
        "generate", "--classes", str(classes), "--cache", str(tmp_path / "c.db"), "--backend", "vllm",
        "--model", "tiny-model", "--n", str(N), "--batch-file", str(tmp_path / "in.jsonl"),
    )  # fmt: skip


def _run_batch(tmp_path: Path, script: dict[str, str]) -> Path:
    """What run_batch writes for in.jsonl: one result line per request, in the same format."""
    out = []
    for line in (tmp_path / "in.jsonl").read_text().splitlines():
        req = json.loads(line)
        name = parse_custom_id(req["custom_id"])[2]
        action = script.get(name, "ok")
        out.append("{not json" if action == "garbage" else json.dumps(_result_line(req, action, name)))
    path = tmp_path / "out.jsonl"
    path.write_text("\n".join(out) + "\n")
    return path


def test_batch_file_round_trip(tmp_path: Path) -> None:
    classes = _classes(tmp_path, 5)
    r = _write(tmp_path, classes)
    assert r.returncode == 0, r.output
    assert "5 requests written" in r.stdout and "run_batch" in r.stdout
    lines = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
    assert {x["url"] for x in lines} == {"/v1/chat/completions"} and {x["method"] for x in lines} == {"POST"}
    assert lines[0]["body"]["model"] == "tiny-model"
    assert lines[0]["body"]["response_format"]["json_schema"]["strict"] is True
    out = _run_batch(tmp_path, {"action number 3": "schema", "action number 4": "garbage"})
    r = run_cli("batch", "collect", "--cache", str(tmp_path / "c.db"), "--file", str(out))
    assert r.returncode == 1, r.output
    assert "5 lines stored (3 ok, 1 invalid, 1 errors)" in r.stdout and "1 unmatched" in r.stdout
    with Store(tmp_path / "c.db", readonly=True) as st:
        (dset,) = st.list_sets()
        assert dset.backend == "vllm" and len(st.completed_classes(dset.id)) == 3
        gens = st.generations(dset.id)
        assert {g["backend"] for g in gens} == {"vllm"} and all(
            g["batch_id"].startswith("file:") for g in gens
        )
        assert {g["status"] for g in gens} == {"ok", "invalid", "error"} and len(gens) == 5
    # ingesting the same file again stores nothing
    r = run_cli("batch", "collect", "--cache", str(tmp_path / "c.db"), "--file", str(out))
    assert "0 lines stored" in r.stdout and "4 already stored" in r.stdout
    with Store(tmp_path / "c.db", readonly=True) as st:
        assert st.count_rows("generations") == 5
    # the next file holds only the two incomplete classes; the invalid one with the next seed
    assert _write(tmp_path, classes).returncode == 0
    lines = [json.loads(x) for x in (tmp_path / "in.jsonl").read_text().splitlines()]
    assert [parse_custom_id(x["custom_id"])[1:] for x in lines] == [
        (1, "action number 3"),
        (0, "action number 4"),
    ]
    assert lines[0]["body"]["seed"] == 1
    r = run_cli(
        "batch", "collect", "--cache", str(tmp_path / "c.db"), "--file", str(_run_batch(tmp_path, {}))
    )
    assert r.returncode == 0, r.output
    with Store(tmp_path / "c.db", readonly=True) as st:
        assert len(st.completed_classes(st.list_sets()[0].id)) == 5


def test_collect_file_that_matches_nothing(tmp_path: Path) -> None:
    assert _write(tmp_path, _classes(tmp_path, 1)).returncode == 0
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"custom_id": "x/r0/y", "response": None, "error": None}) + "\n")
    r = run_cli("batch", "collect", "--cache", str(tmp_path / "c.db"), "--file", str(other))
    assert r.returncode == 2 and "matches a request" in r.stderr
    r = run_cli("batch", "collect", "--cache", str(tmp_path / "c.db"), "--file", str(tmp_path / "nope"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_batch_usage_counts_only_batch_answers(tmp_path: Path) -> None:
    assert _write(tmp_path, _classes(tmp_path, 2)).returncode == 0
    out = _run_batch(tmp_path, {})
    assert run_cli("batch", "collect", "--cache", str(tmp_path / "c.db"), "--file", str(out)).returncode == 0
    with Store(tmp_path / "c.db", readonly=True) as st:
        (row,) = st.batch_usage()
        assert (row["backend"], row["model"], row["requests"]) == ("vllm", "tiny-model", 2)
        assert row["prompt_tokens"] > 0


def test_writing_the_file_again_before_collecting_keeps_every_request(tmp_path: Path) -> None:
    classes = _classes(tmp_path, 3)
    assert _write(tmp_path, classes).returncode == 0
    first = (tmp_path / "in.jsonl").read_text()
    r = _write(tmp_path, classes)
    assert r.returncode == 0 and "3 requests written" in r.stdout
    assert (tmp_path / "in.jsonl").read_text() == first
    r = run_cli(
        "batch", "collect", "--cache", str(tmp_path / "c.db"), "--file", str(_run_batch(tmp_path, {}))
    )
    assert r.returncode == 0 and "3 lines stored" in r.stdout, r.output
