"""Reading commands never change a file; writing into a read-only cache fails in one line."""

from __future__ import annotations

import os
import sqlite3
import warnings
from pathlib import Path

import pytest

from descgen.store import Store, StoreError
from tests.descgen_helpers import immutable, run_cli

from .conftest import CLASSES, foreign_db, run_import, side_files

READ_COMMANDS = [
    ["audit", "--dataset", "mini"],
    ["usage"],
    ["show", "--dataset", "mini", "--class", "wave"],
    ["export", "--dataset", "mini", "--out", "{out}"],
]


def _reading(cmd: list[str], cache: Path, tmp_path: Path) -> list[str]:
    return [cmd[0], "--cache", str(cache), *(a.format(out=tmp_path / "out.json") for a in cmd[1:])]


def _journal_mode(path: Path) -> int:
    return path.read_bytes()[18]  # 1: rollback journal, 2: WAL


@pytest.mark.parametrize("cmd", READ_COMMANDS, ids=lambda c: c[0])
def test_reading_commands_leave_a_foreign_database_alone(tmp_path: Path, cmd: list[str]) -> None:
    other = tmp_path / "other.db"
    before = foreign_db(other)
    r = run_cli(*_reading(cmd, other, tmp_path))
    assert r.returncode == 2
    assert "is not a descgen cache" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert other.read_bytes() == before and side_files(other) == []
    assert _journal_mode(other) == 1


@pytest.mark.parametrize("cmd", READ_COMMANDS, ids=lambda c: c[0])
def test_reading_commands_on_a_missing_cache_create_nothing(tmp_path: Path, cmd: list[str]) -> None:
    missing = tmp_path / "missing.db"
    r = run_cli(*_reading(cmd, missing, tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == f"error: cache file not found: {missing}"
    assert not missing.exists()


def test_reading_commands_do_not_change_a_cache(cache: Path, tmp_path: Path) -> None:
    before = cache.read_bytes()
    for cmd in READ_COMMANDS:
        r = run_cli(*_reading(cmd, cache, tmp_path))
        assert r.returncode == 0, r.stderr
    assert cache.read_bytes() == before and side_files(cache) == []


def test_auditing_a_0444_cache_leaves_no_side_files(cache: Path, tmp_path: Path) -> None:
    cache.chmod(0o444)
    try:
        r = run_cli("audit", "--cache", str(cache), "--dataset", "mini")
        assert r.returncode == 0, r.stderr
        assert side_files(cache) == []
    finally:
        cache.chmod(0o644)
    with Store(cache) as st:  # a writer afterwards is not hindered
        st.ensure_prompt("f" * 64, "later", "1", "text")


def test_writing_commands_say_the_cache_is_read_only(cache: Path, tmp_path: Path) -> None:
    before = cache.read_bytes()
    with immutable(cache):
        r = run_import(cache, tmp_path)
        assert r.returncode == 2 and "the cache is read-only" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        r = run_cli("encode", "--cache", str(cache), "--model", "ViT-B-16", "--pretrained", "none")
        assert r.returncode == 2 and "the cache is read-only" in r.stderr, r.stderr
        with pytest.raises(StoreError, match="the cache is read-only"):
            Store(cache)
        with pytest.raises(StoreError, match="the cache is read-only"):
            Store(cache, create=False).ensure_prompt("f" * 64, "x", "1", "text")
    assert cache.read_bytes() == before and side_files(cache) == []


def test_a_store_opened_read_only_never_writes(cache: Path) -> None:
    with Store(cache, readonly=True) as st:
        assert not st.writable
        with pytest.raises(StoreError, match="opened read-only"):
            st.ensure_prompt("f" * 64, "x", "1", "text")
    with Store(cache, create=False) as st:  # reopened for writing at the first write
        assert not st.writable
        st.ensure_prompt("f" * 64, "x", "1", "text")
        assert st.writable


def _encoder(tiny_clip_config: Path):
    from descgen.encode import RandomWeightsWarning, load_text_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return load_text_encoder(str(tiny_clip_config), "none")


def test_training_api_reads_a_read_only_cache_when_everything_is_encoded(
    cache: Path, tiny_clip_config: Path
) -> None:
    from descgen.encode import encode_missing, load_description_embeddings

    encoder = _encoder(tiny_clip_config)
    with Store(cache) as st:
        (set_,) = st.list_sets("mini")
        assert encode_missing(st, encoder, [set_.id], progress=False) == 12
    before = cache.read_bytes()
    with immutable(cache):
        with Store(cache, create=False) as st:
            assert encode_missing(st, encoder, [set_.id], progress=False) == 0
            spatial, temporal = load_description_embeddings(st, set_.id, CLASSES, encoder.fingerprint)
            assert tuple(spatial.shape[:2]) == (3, 2) and tuple(temporal.shape[:2]) == (3, 2)
            assert not st.writable
    assert cache.read_bytes() == before and side_files(cache) == []
    # One embedding missing: encoding it needs the file, and says so in one line.
    conn = sqlite3.connect(cache)
    conn.execute("DELETE FROM embeddings WHERE rowid = (SELECT MIN(rowid) FROM embeddings)")
    conn.commit()
    conn.close()
    with immutable(cache):
        with Store(cache, create=False) as st:
            with pytest.raises(StoreError, match="the cache is read-only"):
                encode_missing(st, encoder, [set_.id], progress=False)
    with Store(cache, create=False) as st:  # writable again: the missing one is encoded
        assert encode_missing(st, encoder, [set_.id], progress=False) == 1
    assert os.access(cache, os.W_OK)


def test_reading_commands_import_neither_sqlite_utils_nor_numpy(cache: Path, tmp_path: Path) -> None:
    """sqlite-utils (which imports numpy) is loaded only to write; reading commands start without it
    (audit is left out: its too_long check loads the open_clip tokenizer, and with it torch)."""
    import subprocess
    import sys

    commands = [_reading(cmd, cache, tmp_path) for cmd in READ_COMMANDS if cmd[0] != "audit"]
    commands.append(["batch", "status", "--cache", str(cache)])
    code = (
        "import sys\nfrom descgen.cli import app\n"
        f"for args in {commands!r}:\n"
        "    app(args, standalone_mode=False)\n"
        "print(sorted(m for m in ('numpy', 'sqlite_utils') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]", r.stdout
    assert (tmp_path / "out.json").exists()
