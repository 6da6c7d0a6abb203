"""descgen audit, show and usage on real cache files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from descgen.audit import audit_set, is_leak, usage_report
from descgen.encode import encode_missing
from descgen.store import Store
from descgen.transfer import import_files
from tests.descgen_helpers import make_generated_set, sentences, write_classes

FILE = re.compile(
    r"^(?P<ds>[a-z0-9]+?)(?:_(?P<split>base|novel))?_(?P<kind>spatial|temporal)_(?P<n>\d+)\.json$"
)


def _published_groups(shared_data: Path) -> dict[tuple[str, str | None, int], dict[str, Path]]:
    groups: dict[tuple[str, str | None, int], dict[str, Path]] = {}
    for f in sorted((shared_data / "descriptions" / "msta").glob("*.json")):
        m = FILE.match(f.name)
        assert m, f"unexpected file name {f.name}"
        key = (m["ds"], m["split"], int(m["n"]))
        groups.setdefault(key, {})[m["kind"]] = f
    return groups


def test_published_msta_sets_have_exactly_the_known_defects(tmp_path, shared_data):
    """The README lists the defects: one merged K400 N=8 spatial class, duplicates in K600 N=8 spatial
    and K400 N=8 temporal. The audit must report those and nothing else, in every published file.
    near_duplicate is off here (no embeddings: real CLIP weights cannot be downloaded in tests)."""
    groups = _published_groups(shared_data)
    assert len(groups) >= 20
    found: dict[tuple, list[tuple[str, str, str]]] = {}
    with Store(tmp_path / "published.db") as st:
        for (ds, split, n), files in groups.items():
            dataset = f"{ds}_{split}" if split else ds
            classes = shared_data / "splits" / "base2novel" / f"{dataset}.csv" if split else None
            res = import_files(
                st,
                dataset,
                files.get("spatial") or files["temporal"],
                files.get("temporal") if "spatial" in files else None,
                data_dir=shared_data,
                classes_file=classes,
            )
            assert res.missing == [], (dataset, n, res.missing[:3])
            report = audit_set(
                st, res.set, json.loads(json.dumps(_names(shared_data, dataset, classes))), "labels"
            )
            assert report.checks["near_duplicate"].startswith("off")
            assert report.checks["too_long"] == "on"
            found[(dataset, n)] = [(f.class_name, f.kind, f.check) for f in report.findings]
    expected = {
        ("k400", 8): [("hopscotch", "temporal", "duplicate"), ("kicking field goal", "spatial", "count")],
        ("k600", 8): [("battle rope training", "spatial", "duplicate")],
    }
    for key, got in sorted(found.items()):
        assert sorted(got) == expected.get(key, []), key


def _names(shared_data: Path, dataset: str, classes: Path | None) -> list[str]:
    from descgen.datasets import load_class_list

    return load_class_list(dataset=dataset, classes_file=classes, data_dir=shared_data).names


def test_every_check_on_a_generated_set(store, tiny_encoder, tmp_path):
    long_phrase = " ".join(["extremely"] * 90) + " long"
    classes = {
        "abseiling": sentences(
            "abseiling",
            ["ropes on a cliff", "a climber in a harness"],
            ["securing the rope", "descending slowly"],
        ),
        "archery": sentences(
            "archery",
            ["a bow and arrow", "A  BOW and   arrow"],  # duplicate up to case/space
            ["drawing the bow", "releasing the arrow"],
        ),
        "pushing car": sentences(
            "pushing car",
            ["a car being pushed", "pushing cars"],  # second is a leak
            ["leaning on the car", "walking forward"],
        ),
        "bowling": sentences(
            "bowling", ["a bowling lane", long_phrase], ["rolling the ball", "knocking pins"]
        ),
        "juggling": (
            ["A video about balls in the air.", "   "],
            ["A video of juggling: throwing, which is a sub-step."],
        ),
        "twin a": sentences("twin a", ["same thing", "other thing"], ["same step", "other step"]),
        "twin b": sentences("twin b", ["same thing", "other thing"], ["first step here", "second step here"]),
        "failing": (None, None),
        "recovered": sentences("recovered", ["a calm scene", "a tree"], ["starting", "ending"]),
    }
    failures = {
        "failing": [("error", "HTTP 500 after 5 attempts"), ("invalid", "spatial: expected 2 items, got 3")],
        "recovered": [("error", "timeout after 30 s")],
    }
    set_ = make_generated_set(store, "toy", classes, n=2, failures=failures)
    names = [*classes, "never requested"]
    report = audit_set(store, set_, names, "test list")
    got = {(f.class_name, f.kind, f.check, f.index) for f in report.findings}
    assert got == {
        ("archery", "spatial", "duplicate", 1),
        ("pushing car", "spatial", "leak", 1),
        ("bowling", "spatial", "too_long", 1),
        ("juggling", "spatial", "empty", 1),
        ("juggling", "temporal", "count", None),
        ("failing", "spatial", "missing", None),
        ("failing", "temporal", "missing", None),
        ("failing", "both", "error", None),
        ("failing", "both", "invalid", None),
        ("never requested", "spatial", "missing", None),
        ("never requested", "temporal", "missing", None),
    }
    err = next(f for f in report.findings if f.check == "error")
    assert "HTTP 500" in err.message and err.generation_id is not None
    assert report.checks["near_duplicate"].startswith("off")
    # With embeddings, near duplicates appear: "twin a" and "twin b" share all spatial sentences.
    encode_missing(store, tiny_encoder, progress=False)
    report = audit_set(store, set_, names, "test list", near_dup_threshold=0.999999)
    near = [(f.class_name, f.kind, f.other_class) for f in report.findings if f.check == "near_duplicate"]
    assert near == [("twin a", "spatial", "twin b")]
    assert report.encoder == tiny_encoder.fingerprint
    # The recorded truncation is enough when no tokenizer is used.
    no_tok = audit_set(store, set_, names, "test list", use_tokenizer=False)
    assert {(f.class_name, f.index) for f in no_tok.findings if f.check == "too_long"} == {("bowling", 1)}


def test_leak_rule():
    assert is_leak("A video about pushing car.", "pushing car")
    assert is_leak("A video about a car pushed.", "pushing car")
    assert is_leak("a photo of Abseiling", "abseiling")
    assert not is_leak("A video about a person pushing a car.", "pushing car")
    assert not is_leak("A video about ropes.", "abseiling")
    assert not is_leak("A video about .", "abseiling")


def test_cli_audit_exit_codes_json_and_table(tmp_path, shared_data, descgen_process, descgen_cli):
    db = tmp_path / "c.db"
    m = shared_data / "descriptions" / "msta"
    r = descgen_cli(
        "import",
        "--cache",
        str(db),
        "--dataset",
        "k600",
        "--data-dir",
        str(shared_data),
        "--spatial",
        str(m / "k600_spatial_8.json"),
    )
    assert r.returncode == 0, r.stderr
    base = ["audit", "--cache", str(db), "--dataset", "k600", "--data-dir", str(shared_data)]
    r = descgen_cli(*base)
    assert r.returncode == 0, r.stderr
    assert "battle rope training" in r.stdout and "duplicate" in r.stdout
    assert "1 findings in 1 of 600 classes" in r.stdout
    r = descgen_cli(*base, "--strict")
    assert r.returncode == 1
    j1 = descgen_process(*base, "--json")
    j2 = descgen_cli(*base, "--json")
    assert j1.returncode == 0 and j1.stdout == j2.stdout
    doc = json.loads(j1.stdout)
    assert list(doc) == sorted(doc)
    assert doc["counts"] == {"duplicate": 1} and doc["classes"] == 600
    (f,) = doc["findings"]
    assert {"class", "kind", "check", "message"} <= set(f)
    assert (f["class"], f["kind"], f["check"]) == ("battle rope training", "spatial", "duplicate")
    # A clean set passes --strict.
    r = descgen_cli(
        "import",
        "--cache",
        str(db),
        "--dataset",
        "hmdb51",
        "--data-dir",
        str(shared_data),
        "--spatial",
        str(m / "hmdb51_spatial_2.json"),
        "--temporal",
        str(m / "hmdb51_temporal_2.json"),
    )
    assert r.returncode == 0
    r = descgen_cli(
        "audit", "--cache", str(db), "--dataset", "hmdb51", "--data-dir", str(shared_data), "--strict"
    )
    assert r.returncode == 0 and "0 findings" in r.stdout
    r = descgen_cli("audit", "--cache", str(tmp_path / "nope.db"), "--dataset", "k600")
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_show_the_whole_chain(tmp_path, tiny_clip_config, descgen_cli):
    db = tmp_path / "c.db"
    with Store(db) as st:
        make_generated_set(
            st,
            "toy",
            {"abseiling": sentences("abseiling", ["ropes", "a cliff"], ["securing the rope", "descending"])},
            prompt_text="SYSTEM: describe the action {cls} carefully",
            failures={"abseiling": [("invalid", "temporal: 3 items, expected 2")]},
        )
    r = descgen_cli(
        "encode",
        "--cache",
        str(db),
        "--model",
        str(tiny_clip_config),
        "--pretrained",
        "none",
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    r = descgen_cli("show", "--cache", str(db), "--dataset", "toy", "--class", "abseiling")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in (
        "SYSTEM: describe the action {cls} carefully",
        "temperature",
        "raw response",
        "A video about ropes.",
        "securing the rope",
        "clip-tiny@",
        "dim 64",
        "norm",
        "invalid",
        "temporal: 3 items, expected 2",
        "RANDOM",
    ):
        assert needle in out, needle
    r = descgen_cli("show", "--cache", str(db), "--dataset", "toy", "--class", "abseiling", "--json")
    doc = json.loads(r.stdout)
    assert len(doc["descriptions"]) == 4 and all(d["embeddings"][0]["dim"] == 64 for d in doc["descriptions"])
    assert [g["status"] for g in doc["generations"]] == ["invalid", "ok"]
    assert doc["prompt"]["content"].startswith("SYSTEM:")
    r = descgen_cli("show", "--cache", str(db), "--dataset", "toy", "--class", "abseil")
    assert r.returncode == 2 and "similar: abseiling" in r.stderr


def test_usage_costs_and_failures(tmp_path, store, descgen_cli):
    make_generated_set(
        store,
        "toy",
        {f"c{i}": sentences("c", ["a", "b"], ["c", "d"]) for i in range(3)},
        model="gpt-4o-mini",
        tokens=(1000, 500),
        failures={"c0": [("error", "HTTP 429 rate limited"), ("error", "HTTP 429 rate limited")]},
    )
    make_generated_set(
        store, "toy", {"c0": sentences("c", ["a", "b"], ["c", "d"])}, model="my-local-model", tokens=(10, 10)
    )
    rep = usage_report(store)
    rows = {r["model"]: r for r in rep["models"]}
    mini = rows["gpt-4o-mini"]
    assert (mini["requests"], mini["ok"], mini["errors"]) == (5, 3, 2)
    assert mini["prompt_tokens"] == 5000 and mini["completion_tokens"] == 1500
    assert mini["cost_usd"] == pytest.approx((5000 * 0.15 + 1500 * 0.60) / 1e6)
    assert rows["my-local-model"]["cost_usd"] is None and rep["cost_complete"] is False
    assert rep["failures"] == [
        {
            "backend": "openai",
            "model": "gpt-4o-mini",
            "status": "error",
            "reason": "HTTP 429 rate limited",
            "count": 2,
        }
    ]
    prices = tmp_path / "prices.toml"
    prices.write_text('[models."openai/my-local-model"]\ninput = 1.0\noutput = 2.0\n')
    rep2 = usage_report(store, str(prices))
    assert {r["model"]: r["cost_usd"] for r in rep2["models"]}["my-local-model"] == pytest.approx(30 / 1e6)
    r = descgen_cli("usage", "--cache", str(store.path))
    assert r.returncode == 0, r.stderr
    assert "gpt-4o-mini" in r.stdout and "?" in r.stdout and "HTTP 429 rate limited" in r.stdout
    j = json.loads(descgen_cli("usage", "--cache", str(store.path), "--json").stdout)
    assert j["models"][0]["model"] == "gpt-4o-mini"


def test_audit_with_custom_class_list(tmp_path, shared_data, descgen_cli):
    db = tmp_path / "c.db"
    classes = write_classes(tmp_path / "mini.csv", ["wave", "jump"])
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"wave": ["A video about an arm.", "A video about a hand."]}))
    r = descgen_cli(
        "import", "--cache", str(db), "--dataset", "mini", "--classes", str(classes), "--spatial", str(f)
    )
    assert r.returncode == 0, r.stderr
    r = descgen_cli("audit", "--cache", str(db), "--dataset", "mini", "--classes", str(classes), "--json")
    doc = json.loads(r.stdout)
    assert [(x["class"], x["kind"], x["check"]) for x in doc["findings"]] == [("jump", "spatial", "missing")]


@pytest.fixture(scope="module")
def ssv2_temporal(tmp_path_factory, shared_data, tiny_encoder):
    """The published SSv2 temporal sentences (N=2) in a cache, encoded by a tiny ViCLIP (context 32)
    and a tiny open_clip model (context 77), both with random weights."""
    import warnings

    from descgen.encode import RandomWeightsWarning, load_text_encoder

    st = Store(tmp_path_factory.mktemp("ssv2") / "cache.db")
    folder = shared_data / "descriptions" / "msta"
    res = import_files(
        st, "ssv2", folder / "ssv2_spatial_2.json", folder / "ssv2_temporal_2.json", data_dir=shared_data
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        encoders = {"viclip": load_text_encoder("viclip-tiny", "none"), "open_clip": tiny_encoder}
    for enc in encoders.values():
        encode_missing(st, enc, progress=False)
    yield st, res.set, encoders
    st.close()


def _too_long(report) -> set[tuple[str, int]]:
    return {(f.class_name, f.kind, f.index) for f in report.findings if f.check == "too_long"}


@pytest.mark.parametrize("use_tokenizer", [True, False])
def test_too_long_follows_the_encoder_context(ssv2_temporal, use_tokenizer):
    import open_clip

    st, set_, encoders = ssv2_temporal
    assert (encoders["viclip"].context_length, encoders["open_clip"].context_length) == (32, 77)
    tok = open_clip.SimpleTokenizer()
    lengths = {
        (c, kind, i): len(tok.encode(t)) + 2
        for c, kinds in st.descriptions(set_.id).items()
        for kind, texts in kinds.items()
        for i, t in enumerate(texts)
    }
    over_32 = {k for k, n in lengths.items() if n > 32}
    assert len({k for k in over_32 if k[1] == "temporal"}) >= 50  # many temporal sentences are cut
    assert max(lengths.values()) <= 77  # but all of them fit open_clip's context
    viclip = audit_set(st, set_, encoder_fp=encoders["viclip"].fingerprint, use_tokenizer=use_tokenizer)
    assert _too_long(viclip) == over_32
    assert all(
        "over the encoder context of 32" in f.message for f in viclip.findings if f.check == "too_long"
    )
    clip = audit_set(st, set_, encoder_fp=encoders["open_clip"].fingerprint, use_tokenizer=use_tokenizer)
    assert _too_long(clip) == set()
    assert clip.checks["too_long"].startswith("on") and viclip.checks["too_long"].startswith("on")


def test_too_long_without_an_encoder_row_uses_the_model_context():
    from descgen.audit import encoder_context

    assert encoder_context(None) == 77
    assert encoder_context({"model_name": "viclip-b16", "context_length": None}) == 32
    assert encoder_context({"model_name": "ViT-B-16", "context_length": 77}) == 77
    assert encoder_context({"model_name": "viclip-tiny", "context_length": 32}) == 32
