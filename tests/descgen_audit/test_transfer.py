"""descgen import / export: formats, validation, idempotence, provenance, round trips."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from descgen.encode import SetSelectionError
from descgen.store import Store
from descgen.transfer import TransferError, export_set, import_files
from tests.descgen_helpers import run_cli, run_cli_process, write_classes

REPO = Path(__file__).resolve().parents[2]


_cli = run_cli


def _msta(shared_data: Path, name: str) -> Path:
    return shared_data / "descriptions" / "msta" / name


def test_import_published_pair_with_provenance(store, shared_data):
    sp, tp = _msta(shared_data, "hmdb51_spatial_2.json"), _msta(shared_data, "hmdb51_temporal_2.json")
    res = import_files(store, "hmdb51", sp, tp, data_dir=shared_data)
    assert (res.added, res.cached, res.classes, res.n, res.missing) == (0 + 51, 0, 51, 2, [])
    s = res.set
    assert s.backend == "import" and s.model == "hmdb51_spatial_2.json + hmdb51_temporal_2.json" and s.n == 2
    prompt = store.get_prompt(s.prompt_fp)
    assert hashlib.sha256(prompt["content"].encode()).hexdigest() == s.prompt_fp
    assert sp.read_text() in prompt["content"] and tp.read_text() in prompt["content"]
    src_s, src_t = json.loads(sp.read_text()), json.loads(tp.read_text())
    descs = store.descriptions(s.id)
    assert set(descs) == set(src_s)
    for name in src_s:
        assert descs[name]["spatial"] == src_s[name] and descs[name]["temporal"] == src_t[name]
    labels = (shared_data / "labels" / "hmdb51.csv").read_text().splitlines()[1:]
    gens = store.generations(s.id, class_name="kick ball", status="ok")
    assert len(gens) == 1
    assert gens[0]["class_id"] == [line.split(",", 1)[1] for line in labels].index("kick ball")
    assert json.loads(gens[0]["raw_response"]) == {
        "spatial": src_s["kick ball"],
        "temporal": src_t["kick ball"],
    }
    # Idempotent.
    counts = {t: store.count_rows(t) for t in ("sets", "generations", "descriptions", "prompts")}
    again = import_files(store, "hmdb51", sp, tp, data_dir=shared_data)
    assert again.set.id == s.id and again.added == 0 and again.cached == 51
    assert counts == {t: store.count_rows(t) for t in counts}


def test_single_file_fingerprint_is_the_file_hash_and_defects_are_kept(store, shared_data):
    sp = _msta(shared_data, "k400_spatial_8.json")
    res = import_files(store, "k400", sp, data_dir=shared_data)
    assert res.set.prompt_fp == hashlib.sha256(sp.read_bytes()).hexdigest()
    assert res.n == 8 and res.set.params["kinds"] == ["spatial"]
    src = json.loads(sp.read_text())
    merged = [k for k, v in src.items() if len(v) != 8]
    assert len(merged) == 1
    assert store.descriptions(res.set.id)[merged[0]]["spatial"] == src[merged[0]]


def test_index_keyed_equals_name_keyed(tmp_path, store, shared_data):
    names = (shared_data / "labels" / "ucf101.csv").read_text().splitlines()[1:]
    names = [line.split(",", 1)[1] for line in names]
    src = json.loads(_msta(shared_data, "ucf101_spatial_2.json").read_text())
    by_index = {str(names.index(k)): v for k, v in src.items()}
    f = tmp_path / "2_s_description_ucf101.json"
    f.write_text(json.dumps(by_index))
    a = import_files(store, "ucf101", _msta(shared_data, "ucf101_spatial_2.json"), data_dir=shared_data)
    b = import_files(store, "ucf101", f, data_dir=shared_data)
    assert a.set.id != b.set.id
    assert store.descriptions(a.set.id) == store.descriptions(b.set.id)


def test_bad_inputs_write_nothing(tmp_path, shared_data):
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"abseiling": ["A video about ropes."], "flying carpet": ["A video about magic."]})
    )
    db = tmp_path / "c.db"
    res = run_cli_process(
        "import",
        "--cache",
        str(db),
        "--dataset",
        "k400",
        "--data-dir",
        str(shared_data),
        "--spatial",
        str(bad),
    )
    assert res.returncode == 2
    assert (
        "flying carpet" in res.stderr
        and "not in the class list" in res.stderr
        and "Traceback" not in res.stderr
    )
    assert not db.exists()
    idx = tmp_path / "idx.json"
    idx.write_text(json.dumps({"0": ["a"], "400": ["b"]}))
    with Store(db) as st:
        with pytest.raises(TransferError, match="out of range"):
            import_files(st, "k400", idx, data_dir=shared_data)
        (tmp_path / "notjson.json").write_text("{oops")
        with pytest.raises(TransferError, match="not valid JSON"):
            import_files(st, "k400", tmp_path / "notjson.json", data_dir=shared_data)
        with pytest.raises(TransferError, match="unknown dataset"):
            import_files(st, "k999", idx, data_dir=shared_data)
        with pytest.raises(TransferError, match="not found"):
            import_files(st, "k400", tmp_path / "missing.json", data_dir=shared_data)
        assert st.count_rows("sets") == 0 and st.count_rows("descriptions") == 0


def test_export_json_and_round_trip(tmp_path, store, shared_data):
    res = import_files(
        store,
        "hmdb51",
        _msta(shared_data, "hmdb51_spatial_4.json"),
        _msta(shared_data, "hmdb51_temporal_4.json"),
        data_dir=shared_data,
    )
    out = tmp_path / "out" / "hmdb.json"
    (path,) = export_set(store, "hmdb51", out, data_dir=shared_data)
    doc = json.loads(path.read_text())
    assert {"dataset", "prompt", "model", "classes"} <= set(doc)
    assert doc["dataset"] == "hmdb51" and doc["prompt"] == res.set.prompt_fp and doc["model"] == res.set.model
    assert [c["id"] for c in doc["classes"]] == list(range(51))
    labels = [
        line.split(",", 1)[1] for line in (shared_data / "labels/hmdb51.csv").read_text().splitlines()[1:]
    ]
    assert [c["name"] for c in doc["classes"]] == labels
    # Round trip into a fresh cache.
    with Store(tmp_path / "other.db") as other:
        back = import_files(other, "hmdb51", path, data_dir=shared_data)
        assert back.set.params["kinds"] == ["spatial", "temporal"]
        assert other.descriptions(back.set.id) == store.descriptions(res.set.id)


def test_export_msta_layout_round_trip(tmp_path, shared_data):
    db = tmp_path / "c.db"
    sp, tp = _msta(shared_data, "ssv2_spatial_2.json"), _msta(shared_data, "ssv2_temporal_2.json")
    r = _cli(
        "import",
        "--cache",
        str(db),
        "--dataset",
        "ssv2",
        "--data-dir",
        str(shared_data),
        "--spatial",
        str(sp),
        "--temporal",
        str(tp),
    )
    assert r.returncode == 0, r.stderr
    assert "174 classes imported" in r.stdout
    outdir = tmp_path / "msta"
    r = _cli(
        "export",
        "--cache",
        str(db),
        "--dataset",
        "ssv2",
        "--format",
        "msta",
        "--out",
        str(outdir),
        "--data-dir",
        str(shared_data),
    )
    assert r.returncode == 0, r.stderr
    files = sorted(p.name for p in outdir.iterdir())
    assert files == ["2_s_description_ssv2.json", "2_t_description_ssv2.json"]
    s_doc = json.loads((outdir / "2_s_description_ssv2.json").read_text())
    assert list(s_doc) == [str(i) for i in range(174)]
    names = [line for line in (shared_data / "labels/ssv2.csv").read_text().splitlines()[1:]]
    first = names[0].split(",", 1)[1].strip('"')
    assert s_doc["0"] == json.loads(sp.read_text())[first]
    with Store(tmp_path / "back.db") as st:
        back = import_files(
            st,
            "ssv2",
            outdir / "2_s_description_ssv2.json",
            outdir / "2_t_description_ssv2.json",
            data_dir=shared_data,
        )
        with Store(db) as orig:
            (s,) = orig.list_sets("ssv2")
            assert st.descriptions(back.set.id) == orig.descriptions(s.id)


def test_set_selection_is_required_when_ambiguous(tmp_path, shared_data):
    db = tmp_path / "c.db"
    for n in (2, 4):
        r = _cli(
            "import",
            "--cache",
            str(db),
            "--dataset",
            "hmdb51",
            "--data-dir",
            str(shared_data),
            "--spatial",
            str(_msta(shared_data, f"hmdb51_spatial_{n}.json")),
        )
        assert r.returncode == 0, r.stderr
    r = _cli("export", "--cache", str(db), "--dataset", "hmdb51", "--out", str(tmp_path / "x.json"))
    assert r.returncode == 2 and "choose one with --set" in r.stderr
    with Store(db) as st:
        sets = st.list_sets("hmdb51")
        with pytest.raises(SetSelectionError):
            export_set(st, "hmdb51", tmp_path / "x.json")
    assert all(s.id in r.stderr for s in sets)
    r = _cli(
        "export",
        "--cache",
        str(db),
        "--dataset",
        "hmdb51",
        "--set",
        sets[1].id[:5],
        "--out",
        str(tmp_path / "x.json"),
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "x.json").read_text())["model"] == "hmdb51_spatial_4.json"


def test_custom_class_list_and_subset(tmp_path, store, shared_data):
    classes = write_classes(tmp_path / "mini.csv", ["pick up", "put down", "wave"])
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"Pick  Up": ["A video about a hand."], "wave": ["A video about an arm."]}))
    res = import_files(store, "mini", f, classes_file=classes)
    assert res.missing == ["put down"] and res.classes == 2
    assert set(store.descriptions(res.set.id)) == {"pick up", "wave"}
