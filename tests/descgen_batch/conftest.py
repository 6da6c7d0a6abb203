"""Fixtures for the batch-mode tests: the loopback Files/Batch API server and its key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.descgen_batch.fake_batch import FakeBatchAPI


@pytest.fixture
def fake_batch(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchAPI]:
    server = FakeBatchAPI().start()
    monkeypatch.setenv("OPENAI_API_KEY", server.api_key)
    try:
        yield server
    finally:
        server.stop()
