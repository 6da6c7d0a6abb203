"""Fixtures for the encode, audit and transfer tests: real cache files and a tiny random-weight CLIP
(the command line runners and the loopback server are in tests/conftest.py, the cache builders in
tests/descgen_helpers.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from descgen.store import Store


@pytest.fixture(scope="session")
def tiny_encoder(tiny_clip_config: Path):
    from descgen.encode import RandomWeightsWarning, load_text_encoder

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return load_text_encoder(str(tiny_clip_config), "none")


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "cache.db")
    yield s
    s.close()
