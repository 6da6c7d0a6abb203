"""Fixtures for ``msta compare`` and ``--classifier descriptions``: the synthetic motion data and a
cache with two description sets written through the store's API."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.msta_train import class_list, make_synth

PROMPT_FP = "0" * 63 + "2"


def add_set(store, classes: Sequence[str], model: str, words: str, tokens: tuple[int, int], n: int = 2):
    """One set (backend ``openai``, ``model``) with ``n`` sentences of each kind per class; every
    generation reports ``tokens`` (prompt, completion)."""
    set_ = store.ensure_set("synth", PROMPT_FP, "openai", model, {"temperature": 0}, n)
    for c in classes:
        spatial = [f"{words} {c.lower()}, view {k}." for k in range(n)]
        temporal = [
            f"First the shape starts {c.lower()}, then it keeps {words} (step {k})." for k in range(n)
        ]
        store.record_success(
            set_, c, spatial, temporal, raw_response=json.dumps({"c": c}),
            prompt_tokens=tokens[0], completion_tokens=tokens[1],
        )  # fmt: skip
    return set_.id


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data", videos_per_class=1, val_per_class=3)


@pytest.fixture
def two_sets(synth, tmp_path) -> tuple[Path, str, str]:
    """A cache holding two sets (gpt-4o-mini and gpt-4o, so both have prices), no embeddings."""
    from descgen.store import Store

    names = class_list(synth)
    cache = tmp_path / "cache.db"
    with Store(cache) as store:
        store.ensure_prompt(PROMPT_FP, "compare-prompt", "1", "Describe {cls}.")
        a = add_set(store, names, "gpt-4o-mini", "a coloured square moving", (100, 50))
        b = add_set(store, names, "gpt-4o", "a small shape drifting across a plain background", (200, 80))
    return cache, a, b


def synth_overrides(synth: Path) -> list[str]:
    return ["--set", f"data.root={synth}", "--set", "run.device=cpu"]
