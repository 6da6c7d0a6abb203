"""Output files: written atomically; an unusable path is one clear error and leaves no temp file."""

from __future__ import annotations

from pathlib import Path

import pytest

from descgen.errors import DescgenError
from descgen.fileio import OutputPathError, write_text_atomic
from tests.descgen_helpers import immutable, run_cli


def _export(cache: Path, out: Path, *extra: str):
    return run_cli("export", "--cache", str(cache), "--dataset", "mini", "--out", str(out), *extra)


def test_write_replaces_the_file_and_keeps_its_permissions(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    assert write_text_atomic(out, "first\n") == out
    out.chmod(0o640)
    write_text_atomic(out, "second\n")
    assert out.read_text() == "second\n" and out.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    out.write_text("old\n")
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(out, "a lone surrogate \ud800 cannot be encoded")
    assert out.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_unusable_paths_are_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(OutputPathError, match="is a directory"):
        write_text_atomic(tmp_path, "x")
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="cannot create the directory"):
        write_text_atomic(tmp_path / "file" / "out.json", "x")
    assert issubclass(OutputPathError, DescgenError)


def test_export_to_a_directory_or_an_unwritable_place(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "exports"
    target.mkdir()
    r = _export(cache, target)
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and list(target.iterdir()) == []
    with immutable(target):
        r = _export(cache, target / "out.json")
        assert r.returncode == 2 and f"cannot write {target / 'out.json'}" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        r = _export(cache, target / "msta", "--format", "msta")
        assert r.returncode == 2 and "cannot create the directory" in r.stderr, r.stderr
    assert list(target.iterdir()) == []
    r = _export(cache, target / "out.json")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in target.iterdir()] == ["out.json"]


def test_audit_html_to_a_directory_or_an_unwritable_place(cache: Path, tmp_path: Path) -> None:
    target = tmp_path / "reports"
    target.mkdir()
    r = run_cli("audit", "--cache", str(cache), "--dataset", "mini", "--html", str(target))
    assert r.returncode == 2 and "is a directory" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.count("error:") == 1 and list(target.iterdir()) == []
    with immutable(target):
        r = run_cli("audit", "--cache", str(cache), "--dataset", "mini", "--html", str(target / "a.html"))
        assert r.returncode == 2 and f"cannot write {target / 'a.html'}" in r.stderr, r.stderr
    assert list(target.iterdir()) == []
    r = run_cli("audit", "--cache", str(cache), "--dataset", "mini", "--html", str(target / "a.html"))
    assert r.returncode == 0, r.stderr
    assert [p.name for p in target.iterdir()] == ["a.html"]
