"""The descgen command line as a user runs it: every command ends a user error with one line."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["prompts", "show", "nope"], "error: unknown prompt 'nope'"),
        (["prompts", "diff", "msta-general-v1", "nope"], "error: unknown prompt 'nope'"),
        (["audit", "--cache", "{tmp}/none.db", "--dataset", "k400"], "error: cache file not found"),
        (
            ["show", "--cache", "{tmp}/none.db", "--dataset", "k400", "--class", "x"],
            "error: cache file not found",
        ),
        (["usage", "--cache", "{tmp}/none.db"], "error: cache file not found"),
        (
            ["export", "--cache", "{tmp}/none.db", "--dataset", "k400", "--out", "{tmp}/x.json"],
            "error: cache",
        ),
        (["encode", "--cache", "{tmp}/none.db", "--pretrained", "none"], "error: cache file not found"),
        (["import", "--cache", "{tmp}/c.db", "--dataset", "x", "--spatial", "{tmp}/no.json"], "error: "),
    ],
)
def test_user_errors_end_in_one_line_without_traceback(
    tmp_path: Path, descgen_process, args: list[str], message: str
) -> None:
    r = descgen_process(*[a.replace("{tmp}", str(tmp_path)) for a in args], timeout=120)
    assert r.returncode == 2, r.output
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(message), r.stderr
    assert not (tmp_path / "c.db").exists()


def test_module_entry_points() -> None:
    import subprocess
    import sys

    for module in ("descgen", "descgen.cli"):
        r = subprocess.run(
            [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and "generate" in r.stdout and "audit" in r.stdout, r.stderr


def test_commands_with_cache_read_descgen_cache(tmp_path: Path, descgen_process) -> None:
    """``generate`` and ``batch status`` take their cache from $DESCGEN_CACHE like the audit commands."""
    import json

    from descgen.store import Store

    db = tmp_path / "from-env.db"
    Store(db).close()  # a real, empty cache
    env = {"DESCGEN_CACHE": str(db)}
    r = descgen_process("batch", "status", env=env, timeout=120)
    assert r.returncode == 0 and r.stdout == f"no batches in {db}\n", r.output
    classes = tmp_path / "toy.txt"
    classes.write_text("a\nb\n")
    args = ["generate", "--classes", str(classes), "--model", "fake-model", "--dry-run", "--json"]
    r = descgen_process(*args, env=env, timeout=120)
    assert r.returncode == 0, r.output
    plan = json.loads(r.stdout)
    assert plan["cache"] == str(db) and plan["cache_exists"] and plan["to_send"] == 2
    r = descgen_process(*args, "--cache", str(tmp_path / "given.db"), env=env, timeout=120)
    assert json.loads(r.stdout)["cache"] == str(tmp_path / "given.db")  # the option wins
