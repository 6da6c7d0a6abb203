"""Fixtures for the batch-mode tests: the loopback Files/Batch API server and its key."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.descgen_batch.fake_batch import FakeBatchAPI
from tests.descgen_helpers import serve_with_key


@pytest.fixture
def fake_batch(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBatchAPI]:
    yield from serve_with_key(FakeBatchAPI(), monkeypatch)
