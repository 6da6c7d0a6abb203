"""generate() as a function: a misspelt option is an error, not silently ignored."""

from __future__ import annotations

import pytest

from descgen.generate import generate


def test_unknown_options_are_rejected(tmp_path):
    classes = tmp_path / "classes.csv"
    classes.write_text("id,name\n0,waving hand\n")
    common = {"classes_file": classes, "dataset": "tiny", "cache": tmp_path / "c.db", "dry_run": True}
    with pytest.raises(TypeError, match="unknown options: max_tokns, seeed"):
        generate(**common, seeed=3, max_tokns=5)
    summary = generate(**common, seed=3, concurrency=2, vllm_options=None)  # plan and backend options
    assert summary.dry_run and summary.dataset == "tiny"
