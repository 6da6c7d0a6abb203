"""Class lists: built-in datasets, every supported file format, and every rejected one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from descgen.datasets import BUILTIN, ClassListError, builtin_status, load_class_list, resolve_data_dir


@pytest.mark.parametrize(
    ("name", "count", "first"),
    [
        ("k400", 400, "abseiling"),
        ("k600", 600, "abseiling"),
        ("hmdb51", 51, "brush hair"),
        ("ucf101", 101, "Apply Eye Makeup"),
        ("ssv2", 174, "Approaching something with your camera"),
    ],
)
def test_real_label_lists_load(shared_data: Path, name: str, count: int, first: str) -> None:
    cl = load_class_list(name, data_dir=shared_data)
    assert cl.name == name
    assert len(cl.names) == count
    assert cl.names[0] == first
    assert len(set(cl.names)) == count
    assert cl.description == BUILTIN[name]
    assert cl.source == str(shared_data / "labels" / f"{name}.csv")


def test_ssv2_names_with_commas_and_template_description(shared_data: Path) -> None:
    cl = load_class_list("ssv2", data_dir=shared_data)
    assert "Laying something on the table on its side, not upright" in cl.names
    assert "something" in cl.description


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, shared_data: Path) -> None:
    monkeypatch.delenv("MSTA_DATA_DIR", raising=False)
    assert resolve_data_dir(None) == Path("data")
    monkeypatch.setenv("MSTA_DATA_DIR", str(shared_data))
    assert resolve_data_dir(None) == shared_data
    assert resolve_data_dir(tmp_path) == tmp_path  # the argument wins
    assert len(load_class_list("hmdb51")) == 51  # found through the environment
    status = {r["name"]: r["found"] for r in builtin_status(tmp_path)}
    assert status == dict.fromkeys(BUILTIN, False)
    assert all(r["found"] for r in builtin_status(None))


def test_classind_from_ucf_variant(shared_data: Path, tmp_path: Path) -> None:
    with open(shared_data / "labels" / "variants" / "ucf101_camelcase.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    path = tmp_path / "classInd.txt"
    path.write_text("".join(f"{int(r['id']) + 1} {r['name']}\r\n" for r in rows))
    cl = load_class_list(classes_file=path)
    assert cl.name == "classInd"
    assert cl.names == [r["name"] for r in rows]
    assert cl.names[0] == "ApplyEyeMakeup"


def test_ssv2_labels_json_with_string_and_int_ids(shared_data: Path, tmp_path: Path) -> None:
    names = load_class_list("ssv2", data_dir=shared_data).names
    # Official layout: name -> id as a string, not in id order.
    mapping = {name: str(i) for i, name in reversed(list(enumerate(names)))}
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(mapping))
    cl = load_class_list("ssv2", classes_file=path)
    assert cl.name == "ssv2" and cl.names == names and "something" in cl.description
    path.write_text(json.dumps({name: i for i, name in enumerate(names)}))
    assert load_class_list(classes_file=path).names == names


def test_csv_with_extra_columns_and_one_per_line(shared_data: Path, tmp_path: Path) -> None:
    base = load_class_list(classes_file=shared_data / "splits" / "base2novel" / "hmdb51_base.csv")
    assert base.name == "hmdb51_base" and len(base.names) == 26
    p = tmp_path / "mine.txt"
    p.write_text("opening a door\nclosing a door\n\n")
    cl = load_class_list(classes_file=p)
    assert cl.name == "mine" and cl.names == ["opening a door", "closing a door"]
    p = tmp_path / "noheader.csv"
    p.write_text("1,b\n0,a\n")
    assert load_class_list(classes_file=p).names == ["a", "b"]


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        (
            "dup.csv",
            "id,name\n0,jumping\n1,running\n2,Jumping \n",
            "duplicate class name 'Jumping' (first at line 2)",
        ),
        ("dupid.csv", "id,name\n0,a\n1,b\n1,c\n", "line 4: duplicate id 1"),
        ("gap.csv", "id,name\n0,a\n1,b\n3,c\n", "id 2 is missing"),
        ("start.csv", "id,name\n5,a\n6,b\n", "ids must start at 0 or 1"),
        ("emptyname.csv", "id,name\n0,a\n1,\n", "line 3: empty class name"),
        ("badid.csv", "id,name\n0,a\nx,b\n", "line 3: id 'x' is not an integer"),
        ("empty.txt", "", "is empty"),
        ("blank.txt", "a\n\nb\n", "line 2: empty class name"),
        ("dup.txt", "a\nb\na\n", "duplicate class name 'a'"),
        ("bad.json", '{"a": 0, ', "not valid JSON"),
        ("badid.json", '{"a": "zero"}', "expected an integer"),
        ("gap.json", '{"a": "0", "b": "2"}', "id 1 is missing"),
        ("header.csv", "id,name\n", "has a header but no classes"),
    ],
)
def test_bad_lists_name_the_problem(tmp_path: Path, filename: str, content: str, expected: str) -> None:
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(ClassListError) as info:
        load_class_list(classes_file=path)
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_unusable_inputs(tmp_path: Path, shared_data: Path) -> None:
    with pytest.raises(ClassListError, match="unknown dataset 'k700'"):
        load_class_list("k700", data_dir=shared_data)
    with pytest.raises(ClassListError, match="not found at"):
        load_class_list("k400", data_dir=tmp_path)
    with pytest.raises(ClassListError, match="no class list given"):
        load_class_list()
    with pytest.raises(ClassListError, match="file not found"):
        load_class_list(classes_file=tmp_path / "nope.csv")
    with pytest.raises(ClassListError, match="is a directory"):
        load_class_list(classes_file=tmp_path)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ClassListError, match="not UTF-8"):
        load_class_list(classes_file=latin)
    ok = tmp_path / "ok.txt"
    ok.write_text("a\n")
    with pytest.raises(ClassListError, match="not usable"):
        load_class_list("bad name!", classes_file=ok)
