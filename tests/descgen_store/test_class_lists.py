"""Class lists with absurdly long lines or names are refused with the line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from descgen.datasets import MAX_CLASS_NAME_CHARS, ClassListError, load_class_list
from descgen.errors import DescgenError
from descgen.store import StoreError
from descgen.transfer import TransferError
from tests.descgen_helpers import run_cli


def _load(path: Path):
    return load_class_list(dataset="toy", classes_file=path)


def test_a_csv_field_over_the_csv_limit(tmp_path: Path) -> None:
    f = tmp_path / "toy.csv"
    f.write_text('id,name\n0,wave\n1,"' + "x" * 200_000 + '"\n')
    with pytest.raises(ClassListError, match=r"line 3: the line is 200004 characters long"):
        _load(f)
    multi = tmp_path / "multi.csv"  # a quoted field spread over many short lines
    multi.write_text('id,name\n0,wave\n1,"' + ("y" * 1000 + "\n") * 200 + '"\n')
    with pytest.raises(ClassListError, match=r"class list .*multi.csv, line \d+"):
        _load(multi)


def test_a_ten_megabyte_name_is_refused_and_not_printed(tmp_path: Path) -> None:
    f = tmp_path / "toy.txt"
    huge = "z" * 10_000_000
    f.write_text(f"wave\n{huge}\n")
    with pytest.raises(ClassListError, match="line 2"):
        _load(f)
    r = run_cli("generate", "--classes", str(f), "--dry-run", "--cache", str(tmp_path / "c.db"))
    assert r.returncode == 2 and "line 2" in r.stderr, r.stderr
    assert len(r.stdout) + len(r.stderr) < 2000 and not (tmp_path / "c.db").exists()


def test_the_name_length_limit(tmp_path: Path) -> None:
    f = tmp_path / "toy.txt"
    f.write_text("wave\n" + "a" * MAX_CLASS_NAME_CHARS + "\n")
    assert len(_load(f).names[1]) == MAX_CLASS_NAME_CHARS
    f.write_text("wave\n" + "a" * (MAX_CLASS_NAME_CHARS + 1) + "\n")
    with pytest.raises(ClassListError, match=f"line 2: class name is {MAX_CLASS_NAME_CHARS + 1} characters"):
        _load(f)
    j = tmp_path / "labels.json"
    j.write_text('{"wave": "0", "' + "b" * 500 + '": "1"}')
    with pytest.raises(ClassListError, match="500 characters"):
        load_class_list(dataset="toy", classes_file=j)


def test_user_errors_are_descgen_errors() -> None:
    for cls in (StoreError, ClassListError, TransferError):
        assert issubclass(cls, DescgenError) and cls(message="m").exit_code == 2
