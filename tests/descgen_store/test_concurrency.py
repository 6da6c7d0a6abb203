"""Two ``descgen generate`` processes on one cache both finish, and every class ends complete once."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from descgen.store import Store
from tests.descgen.fake_openai import FakeOpenAI, phrases_for
from tests.descgen_helpers import DESCGEN, REPO

N_CLASSES = 16


def _start(fake: FakeOpenAI, classes: Path, cache: Path) -> subprocess.Popen:
    env = dict(os.environ, OPENAI_API_KEY=fake.api_key, PYTHONPATH=str(REPO))
    args = ["generate", "--classes", str(classes), "--cache", str(cache), "--base-url", fake.url]
    args += ["--model", "fake-model", "--concurrency", "4", "--timeout", "20", "--n", "2"]
    return subprocess.Popen(
        [*DESCGEN, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_two_writers_on_one_cache_both_finish(tmp_path: Path) -> None:
    classes = tmp_path / "toy.csv"
    classes.write_text("id,name\n" + "".join(f"{i},action number {i}\n" for i in range(N_CLASSES)))
    cache = tmp_path / "cache.db"
    with FakeOpenAI(latency=0.3) as fake:
        procs = [_start(fake, classes, cache) for _ in range(2)]
        outs = [p.communicate(timeout=240) for p in procs]
        overlapped = fake.max_in_flight > 4  # both processes had requests in flight at once
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert "Traceback" not in err and "IntegrityError" not in err
    assert overlapped
    with Store(cache, readonly=True) as st:
        assert st.integrity_check() == "ok"
        (set_,) = st.list_sets("toy")
        descs = st.descriptions(set_.id)
        assert len(descs) == N_CLASSES
        for name, kinds in descs.items():
            assert kinds == phrases_sentences(st, set_.id, name)
            assert len(kinds["spatial"]) == 2 and len(kinds["temporal"]) == 2
        ok = st.generations(set_.id, status="ok")
        assert sorted(g["class_name"] for g in ok) == sorted(descs)  # one current answer per class
    conn = sqlite3.connect(cache)
    dups = conn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM descriptions GROUP BY set_id, class_name, kind, idx HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    conn.close()
    assert dups == 0


def phrases_sentences(st: Store, set_id: str, name: str) -> dict[str, list[str]]:
    """The stored sentences of a class, checked to come from the server's answer for that class."""
    rows = st.description_rows(set_id, name)
    expected = phrases_for(name, 2)
    for r in rows:
        assert r["phrase"] in expected[r["kind"]]
    return {k: [r["text"] for r in rows if r["kind"] == k] for k in ("spatial", "temporal")}
