"""Versioned migrations; foreign, newer and non-SQLite files are refused without being touched."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import descgen.store as store_mod
from descgen.errors import DescgenError
from descgen.store import MIGRATIONS, SCHEMA_VERSION, Migration, Store, StoreError

from .conftest import fill, foreign_db, side_files


def _meta_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    finally:
        conn.close()


def test_a_new_cache_records_every_migration_once(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with Store(path) as st:
        assert st.schema_version() == SCHEMA_VERSION
        assert [(m["version"], m["name"]) for m in st.applied_migrations()] == [
            (m.version, m.name) for m in MIGRATIONS
        ]
    with Store(path) as st:  # opening again applies nothing
        assert len(st.applied_migrations()) == len(MIGRATIONS)
    assert _meta_version(path) == SCHEMA_VERSION


def test_an_older_cache_is_upgraded_by_a_writer_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "old.db"
    with monkeypatch.context() as m:  # the first release knew only the first step
        m.setattr(store_mod, "MIGRATIONS", MIGRATIONS[:1])
        m.setattr(store_mod, "SCHEMA_VERSION", 1)
        with Store(path) as st:
            set_ = fill(st)
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE migrations")  # that release kept no migration log
    conn.commit()
    conn.close()
    with Store(path, readonly=True) as st:  # a reader reads it as it is
        assert st.schema_version() == 1 and len(st.descriptions(set_.id)) == 3
    assert _meta_version(path) == 1
    with Store(path) as st:
        assert st.schema_version() == SCHEMA_VERSION
        assert [m["version"] for m in st.applied_migrations()] == [m.version for m in MIGRATIONS[1:]]
        assert len(st.descriptions(set_.id)) == 3


def test_each_step_runs_once_and_a_failed_step_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.db"
    calls: list[int] = []

    def add_notes(db) -> None:
        calls.append(1)
        db.execute("CREATE TABLE notes (text TEXT)")

    def broken(db) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("step failed")

    Store(path).close()
    steps = (*MIGRATIONS, Migration(SCHEMA_VERSION + 1, "notes", add_notes))
    monkeypatch.setattr(store_mod, "MIGRATIONS", steps)
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    Store(path).close()
    Store(path).close()
    assert calls == [1]
    monkeypatch.setattr(store_mod, "MIGRATIONS", (*steps, Migration(SCHEMA_VERSION + 2, "broken", broken)))
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", SCHEMA_VERSION + 2)
    with pytest.raises(RuntimeError, match="step failed"):
        Store(path)
    assert _meta_version(path) == SCHEMA_VERSION + 1
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert "notes" in tables and "half_done" not in tables


def test_a_cache_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    Store(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for kwargs in ({}, {"readonly": True}, {"create": False}):
        with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer than"):
            Store(path, **kwargs)
    assert path.read_bytes() == before


@pytest.mark.parametrize("kwargs", [{}, {"readonly": True}, {"create": False}])
def test_a_foreign_sqlite_file_is_refused_and_left_alone(tmp_path: Path, kwargs: dict) -> None:
    path = tmp_path / "other.db"
    before = foreign_db(path)
    with pytest.raises(StoreError, match="is not a descgen cache") as exc:
        Store(path, **kwargs)
    assert "\n" not in str(exc.value) and isinstance(exc.value, DescgenError)
    assert path.read_bytes() == before and side_files(path) == []


def test_a_file_that_is_not_sqlite_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("plain text, not a database\n" * 200)
    before = path.read_bytes()
    for kwargs in ({}, {"readonly": True}):
        with pytest.raises(StoreError, match="not a usable SQLite cache"):
            Store(path, **kwargs)
    assert path.read_bytes() == before


def test_removed_helpers_are_gone() -> None:
    for name in ("list_datasets", "get_generation", "distinct_description_count"):
        assert not hasattr(Store, name)


def test_an_empty_file_becomes_a_cache_for_writers_only(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StoreError, match="has no tables"):
        Store(path, readonly=True)
    assert path.stat().st_size == 0
    with Store(path, create=False) as st:
        assert st.schema_version() == SCHEMA_VERSION and st.list_sets() == []
