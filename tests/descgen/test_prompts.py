"""Prompt files: loading, fingerprints, rendering, schema, sentences, and the prompts commands."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from descgen.prompts import (
    DEFAULT_PROMPT,
    PromptError,
    canonical_json,
    diff_prompts,
    list_prompts,
    load_prompt,
    load_prompt_file,
    prompt_from_content,
)


def test_shipped_prompts_load_and_differ() -> None:
    prompts = {Path(p.source).stem: p for p in list_prompts()}
    assert {"msta-general-v1", "msta-terse-v1"} <= set(prompts)
    fps = {p.fingerprint for p in prompts.values()}
    assert len(fps) == len(prompts)
    default = load_prompt()
    assert Path(default.source).stem == DEFAULT_PROMPT
    assert default.fingerprint == hashlib.sha256(canonical_json(default.content).encode()).hexdigest()


def test_resolution_by_stem_name_and_path(tmp_path: Path) -> None:
    by_stem = load_prompt("msta-terse-v1")
    assert load_prompt("msta-terse").fingerprint == by_stem.fingerprint  # name -> latest version
    assert load_prompt(by_stem.source).fingerprint == by_stem.fingerprint
    with pytest.raises(PromptError, match="unknown prompt 'nope'.*msta-general-v1"):
        load_prompt("nope")
    with pytest.raises(PromptError, match="not found"):
        load_prompt(str(tmp_path / "missing.toml"))


def test_fingerprint_ignores_comments_but_not_wording(tmp_path: Path) -> None:
    src = Path(load_prompt("msta-general-v1").source).read_text()
    a = tmp_path / "a.toml"
    a.write_text("# another comment\n\n" + src)
    assert load_prompt_file(a).fingerprint == load_prompt("msta-general-v1").fingerprint
    b = tmp_path / "b.toml"
    b.write_text(src.replace("temperature = 0.7", "temperature = 0.8"))
    assert load_prompt_file(b).fingerprint != load_prompt("msta-general-v1").fingerprint
    # The canonical text stored in the cache rebuilds the same prompt.
    p = load_prompt_file(b)
    assert prompt_from_content(p.canonical).fingerprint == p.fingerprint


def test_rendering_and_ssv2_wording() -> None:
    p = load_prompt()
    msgs = p.messages("ssv2", "Something-Something v2 (templates)", "Pushing something from left to right", 3)
    assert [m["role"] for m in msgs] == ["system", "user"]
    user = msgs[1]["content"]
    assert '"Pushing something from left to right"' in user
    assert "Something-Something v2 (templates)" in user
    assert "exactly 3 strings" in user
    assert '"something" stands for' in user and "any object" in user
    assert "{" not in user.replace('{"', "")  # every placeholder was filled


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_schema_for_any_n(n: int) -> None:
    schema = load_prompt().schema(n)
    assert schema["required"] == ["spatial", "temporal"]
    assert schema["additionalProperties"] is False
    for kind in ("spatial", "temporal"):
        prop = schema["properties"][kind]
        assert prop["type"] == "array" and prop["items"] == {"type": "string"}
        assert prop["minItems"] == n and prop["maxItems"] == n
    json.dumps(schema)


def test_sentences_have_the_msta_shapes() -> None:
    p = load_prompt()
    assert (
        p.sentence("spatial", "a red ball on grass", "Kicking Ball") == "A video about a red ball on grass."
    )
    assert p.sentence("temporal", "swinging the leg back", "Kicking Ball") == (
        "A video of kicking ball generally involves the following step: swinging the leg back, which is a sub-step."
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        (
            'spatial = "A video about {phrase}."',
            'spatial = "A video about {thing}."',
            "unknown placeholder {thing}",
        ),
        ('spatial = "A video about {phrase}."', 'spatial = "A video about it."', "must contain {phrase}"),
        ("Action class: ", "Action class {klass}: ", "unknown placeholder {klass}"),
        ("temperature = 0.7", 'temperature = "hot"', "sampling.temperature"),
        ("n = 1", "n = 3", "sampling.n must be 1"),
        ('name = "msta-general"', "", "missing name"),
        ("[sentences]", "[sentences", "not valid TOML"),
    ],
)
def test_bad_prompt_files(tmp_path: Path, old: str, new: str, message: str) -> None:
    src = Path(load_prompt("msta-general-v1").source).read_text()
    assert old in src
    path = tmp_path / "bad.toml"
    path.write_text(src.replace(old, new, 1))
    with pytest.raises(PromptError) as info:
        load_prompt(str(path))
    assert message in str(info.value)


def test_diff_shows_real_changes() -> None:
    a, b = load_prompt("msta-general-v1"), load_prompt("msta-terse-v1")
    text = diff_prompts(a, b)
    assert text.startswith("--- msta-general-v1")
    assert "-sampling.temperature = 0.7" in text and "+sampling.temperature = 0.4" in text
    assert diff_prompts(a, a) == ""


def test_prompts_commands(tmp_path: Path, descgen_cli) -> None:
    r = descgen_cli("prompts", "list")
    assert r.returncode == 0, r.output
    assert "msta-general-v1" in r.output and "msta-terse-v1" in r.output
    r = descgen_cli("prompts", "show", "msta-terse")
    assert r.returncode == 0
    assert load_prompt("msta-terse").fingerprint in r.output
    assert "sentences.temporal" in r.output
    r = descgen_cli("prompts", "diff", "msta-general-v1", "msta-terse-v1")
    assert r.returncode == 0 and "+sampling.temperature = 0.4" in r.output
    r = descgen_cli("prompts", "show", "nope")
    assert r.returncode == 2
    assert r.stderr == "error: " + r.stderr.removeprefix("error: ") and "unknown prompt" in r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
