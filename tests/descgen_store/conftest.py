"""Real cache files for the store tests."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from descgen.store import Store
from tests.descgen_helpers import CliResult, make_generated_set, run_cli, sentences, write_classes

CLASSES = ["pick up", "put down", "wave"]


def fill(store: Store, dataset: str = "mini", classes: list[str] | None = None):
    """A generated set with two spatial and two temporal sentences per class."""
    data = {
        c: sentences(c, [f"a hand near {c}", f"an object in {c}"], [f"reach for {c}", f"let go in {c}"])
        for c in (classes or CLASSES)
    }
    return make_generated_set(store, dataset, data)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A closed cache file with one set of three classes."""
    path = tmp_path / "cache.db"
    with Store(path) as st:
        fill(st)
    return path


def run_import(cache: Path, tmp_path: Path) -> CliResult:
    """``descgen import`` of one spatial description into the set ``mini`` of CACHE (the class list
    and the description file are written in TMP_PATH)."""
    classes = write_classes(tmp_path / "mini.csv", CLASSES)
    descs = tmp_path / "d.json"
    descs.write_text(json.dumps({"wave": ["A video about an arm."]}))
    args = ["--dataset", "mini", "--classes", str(classes), "--spatial", str(descs)]
    return run_cli("import", "--cache", str(cache), *args)


def side_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name + "-"))


def foreign_db(path: Path) -> bytes:
    """An SQLite file of some other program; returns its bytes."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
    conn.execute("INSERT INTO notes (text) VALUES ('keep me as I am')")
    conn.commit()
    conn.close()
    return path.read_bytes()
