"""A cache with damaged pages is refused in one line that points at .recover, and never written."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from descgen.store import Store, StoreError
from tests.descgen_helpers import run_cli

from .conftest import CLASSES, fill, run_import, side_files


def _damage(path: Path) -> None:
    """Overwrite every page but the first (the schema) with garbage."""
    size = path.stat().st_size
    page = int.from_bytes(path.read_bytes()[16:18], "big")
    assert size >= 4 * page
    with open(path, "r+b") as f:
        for start in range(page, size, page):
            f.seek(start)
            f.write(os.urandom(64) + b"\xff" * (page - 64))


@pytest.fixture
def corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "cache.db"
    with Store(path) as st:
        for i in range(4):
            fill(st, dataset=f"mini{i}", classes=[f"{c} {j}" for c in CLASSES for j in range(20)])
    _damage(path)
    return path


def test_writers_refuse_a_corrupt_cache_without_writing(corrupt: Path, tmp_path: Path) -> None:
    before = corrupt.read_bytes()
    with pytest.raises(StoreError, match=r"is corrupt .*\.recover") as exc:
        Store(corrupt)
    assert "\n" not in str(exc.value)
    r = run_import(corrupt, tmp_path)
    assert r.returncode == 2 and ".recover" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert corrupt.read_bytes() == before and side_files(corrupt) == []


@pytest.mark.parametrize(
    "cmd",
    [["audit", "--dataset", "mini0"], ["usage"], ["export", "--dataset", "mini0", "--out", "{out}"]],
    ids=lambda c: c[0],
)
def test_readers_refuse_a_corrupt_cache_in_one_line(corrupt: Path, tmp_path: Path, cmd: list[str]) -> None:
    before = corrupt.read_bytes()
    args = [a.format(out=tmp_path / "out.json") for a in cmd[1:]]
    r = run_cli(cmd[0], "--cache", str(corrupt), *args)
    assert r.returncode == 2, r.stdout
    assert ".recover" in r.stderr and "malformed" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert corrupt.read_bytes() == before and not (tmp_path / "out.json").exists()
