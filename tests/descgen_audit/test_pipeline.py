"""encode, audit, show, usage and export on a cache written by a real `descgen generate` run.

The generator talks to the loopback OpenAI-compatible test server (tests/descgen/fake_openai.py)
with the real openai client; failures are scripted per class.
"""

from __future__ import annotations

import json

from descgen.encode import load_description_embeddings, select_set
from descgen.store import Store
from tests.descgen_helpers import run_cli, write_classes


def test_commands_on_a_generated_cache(tmp_path, fake_openai, tiny_clip_config, tiny_encoder):
    server = fake_openai
    names = ["pick up", "put down", "wave hand", "always broken", "duplicated"]
    classes = write_classes(tmp_path / "toy.csv", names)
    server.script("always broken", "500")
    server.script("duplicated", "dup")
    db = tmp_path / "cache.db"
    try:
        r = run_cli(
            "generate",
            "--classes",
            str(classes),
            "--dataset",
            "toy",
            "--cache",
            str(db),
            "--base-url",
            server.url,
            "--model",
            "gpt-4o-mini",
            "--n",
            "2",
            "--concurrency",
            "2",
            "--timeout",
            "5",
            "--max-attempts",
            "2",
            "--max-invalid",
            "0",
        )
    finally:
        server.stop()
    assert r.returncode != 0  # two classes stay incomplete
    with Store(db) as st:
        set_ = select_set(st, dataset="toy")
        done = st.completed_classes(set_.id)
    assert done == {"pick up", "put down", "wave hand"}

    r = run_cli("audit", "--cache", str(db), "--dataset", "toy", "--classes", str(classes), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    by_class = {}
    for f in doc["findings"]:
        by_class.setdefault(f["class"], set()).add(f["check"])
    assert set(by_class) == {"always broken", "duplicated"}
    assert {"missing", "error"} <= by_class["always broken"]
    assert {"missing", "invalid"} <= by_class["duplicated"]
    err = next(f for f in doc["findings"] if f["class"] == "always broken" and f["check"] == "error")
    assert "500" in err["message"] or "server" in err["message"].lower()

    r = run_cli(
        "encode",
        "--cache",
        str(db),
        "--dataset",
        "toy",
        "--model",
        str(tiny_clip_config),
        "--pretrained",
        "none",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    with Store(db) as st:
        sp, tp = load_description_embeddings(st, set_.id, ["wave hand", "pick up"], tiny_encoder.fingerprint)
    assert sp.shape == (2, 2, tiny_encoder.dim) and tp.shape == (2, 2, tiny_encoder.dim)

    html = tmp_path / "audit.html"
    r = run_cli(
        "audit",
        "--cache",
        str(db),
        "--dataset",
        "toy",
        "--classes",
        str(classes),
        "--html",
        str(html),
        "--strict",
    )
    assert r.returncode == 1 and html.is_file()
    page = html.read_text()
    assert "msta-general" in page or set_.prompt_fp[:16] in page

    r = run_cli("show", "--cache", str(db), "--dataset", "toy", "--class", "wave hand", "--json")
    assert r.returncode == 0, r.stderr
    chain = json.loads(r.stdout)
    assert chain["prompt"]["content"] and chain["generations"][-1]["status"] == "ok"
    assert chain["generations"][-1]["raw_response"].startswith("{")
    assert all(
        d["embeddings"] and d["embeddings"][0]["encoder"] == tiny_encoder.fingerprint
        for d in chain["descriptions"]
    )

    r = run_cli("usage", "--cache", str(db), "--json")
    usage = json.loads(r.stdout)
    (row,) = usage["models"]
    assert row["model"] == "gpt-4o-mini" and row["ok"] == 3 and row["errors"] >= 1
    assert row["prompt_tokens"] > 0 and row["cost_usd"] is not None and row["cost_usd"] > 0
    assert usage["failures"]

    out = tmp_path / "toy.json"
    r = run_cli(
        "export", "--cache", str(db), "--dataset", "toy", "--out", str(out), "--classes", str(classes)
    )
    assert r.returncode == 0, r.stderr
    exported = json.loads(out.read_text())
    assert [c["name"] for c in exported["classes"]] == ["pick up", "put down", "wave hand"]
    assert [c["id"] for c in exported["classes"]] == [0, 1, 2]
