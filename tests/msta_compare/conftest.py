"""Fixtures for ``msta compare`` and ``--classifier descriptions``: the synthetic motion data and a
cache with two description sets written through the store's API."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.descgen_helpers import make_generated_set
from tests.msta_train import class_list, make_synth


def descriptions(classes: Sequence[str], words: str, n: int = 2) -> dict[str, tuple[list[str], list[str]]]:
    """``n`` spatial and ``n`` temporal sentences per class, built around ``words``."""
    return {
        c: (
            [f"{words} {c.lower()}, view {k}." for k in range(n)],
            [f"First the shape starts {c.lower()}, then it keeps {words} (step {k})." for k in range(n)],
        )
        for c in classes
    }


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
        # Every generation reports the same (prompt, completion) tokens: the costs the tests price.
        a = make_generated_set(
            store, "synth", descriptions(names, "a coloured square moving"),
            model="gpt-4o-mini", prompt_text="Describe {cls}.", tokens=(100, 50),
        )  # fmt: skip
        b = make_generated_set(
            store, "synth", descriptions(names, "a small shape drifting across a plain background"),
            model="gpt-4o", prompt_text="Describe {cls}.", tokens=(200, 80),
        )  # fmt: skip
    return cache, a.id, b.id


def synth_overrides(synth: Path) -> list[str]:
    return ["--set", f"data.root={synth}", "--set", "run.device=cpu"]
