"""Pacing by the rate-limit headers: durations, the local buckets, and whole runs against a
loopback server that enforces per-minute request and token limits."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager

import pytest

from descgen.backends.ratelimit import (
    CHARS_PER_TOKEN,
    Pacer,
    estimate_tokens,
    parse_duration,
    read_budgets,
    text_tokens,
)
from descgen.generate import generate
from tests.descgen.fake_ratelimit import RateLimitedOpenAI, format_duration
from tests.descgen_helpers import serve_with_key, write_classes

# The loopback server started, its key in OPENAI_API_KEY, stopped on leaving the block.
serving = contextmanager(serve_with_key)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("12ms", 0.012),
        ("6s", 6.0),
        ("1m30s", 90.0),
        ("1m", 60.0),
        ("2h0m0.5s", 7200.5),
        ("0.5s", 0.5),
        ("1.25", 1.25),
        (" 3S ", 3.0),
        ("1d", 86400.0),
        ("0ms", 0.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", [None, "", "s", "ms5", "5x", "1m-3s", "-2s", "abc", "1s2", "nan", "inf"])
def test_parse_duration_rejects(text):
    assert parse_duration(text) is None


def test_format_duration_round_trips():
    for seconds in (0.012, 0.5, 6.0, 90.0, 59.5):
        assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.01)


def test_read_budgets():
    headers = {
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "599",
        "x-ratelimit-reset-requests": "100ms",
        "x-ratelimit-remaining-tokens": "garbage",
    }
    got = read_budgets(headers)
    assert set(got) == {"requests"}
    assert got["requests"].remaining == 599 and got["requests"].limit == 600
    assert got["requests"].reset_s == pytest.approx(0.1)
    assert read_budgets(None) == {} and read_budgets({}) == {}


def _headers(limit: int, remaining: int, reset: str) -> dict[str, str]:
    return {
        "x-ratelimit-limit-requests": str(limit),
        "x-ratelimit-remaining-requests": str(remaining),
        "x-ratelimit-reset-requests": reset,
    }


def test_token_estimate_rounds_characters_up():
    assert [text_tokens(c) for c in (0, 1, CHARS_PER_TOKEN, CHARS_PER_TOKEN + 1)] == [0, 1, 1, 2]
    messages = [
        {"role": "system", "content": "x" * CHARS_PER_TOKEN},
        {"role": "user", "content": "y" * CHARS_PER_TOKEN},
    ]
    assert estimate_tokens(messages, 100) == 2 + 100 and estimate_tokens(messages, None) == 2


def test_pacer_spreads_requests_at_the_reported_rate():
    async def scenario() -> list[float]:
        pacer = Pacer()
        loop = asyncio.get_running_loop()
        tokens = await pacer.acquire(10)
        # 10 requests a second, nothing left: each next request waits a tenth of a second.
        pacer.release(tokens, _headers(limit=10, remaining=0, reset="1s"))
        starts = []
        for _ in range(4):
            t = await pacer.acquire(10)
            starts.append(loop.time())
            pacer.release(t, None)
        return starts

    starts = asyncio.run(scenario())
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert all(0.07 < g < 0.2 for g in gaps), gaps


def test_pacer_without_headers_never_waits():
    async def scenario() -> float:
        pacer = Pacer()
        for _ in range(200):
            pacer.release(await pacer.acquire(1000), None)
        return pacer.waited_s

    assert asyncio.run(scenario()) == 0.0


def _run(tmp_path, server: RateLimitedOpenAI, count: int, concurrency: int):
    names = [f"paced action {i}" for i in range(count)]
    return generate(
        classes_file=write_classes(tmp_path / "classes.csv", names),
        dataset="paced",
        cache=tmp_path / "cache.db",
        base_url=server.url,
        model="fake-model",
        concurrency=concurrency,
        timeout=30,
    )


def test_request_limit_no_429_storm(tmp_path, monkeypatch):
    # 20 requests a second, a burst of 20: 80 classes at concurrency 16 need about 3 s of pacing;
    # unpaced, 16 requests in flight at 50 ms each would ask for ~300 a second.
    server = RateLimitedOpenAI(rpm=1200, tpm=10**9, window_s=1.0, latency=0.05)
    with serving(server, monkeypatch):
        s = _run(tmp_path, server, 80, 16)
        stats = server.stats()
    assert s.done == 80 and s.failed == 0, s.line()
    assert stats["ok"] == 80
    assert stats["limited"] <= 3, stats


def test_token_limit_no_429_storm(tmp_path, monkeypatch):
    # The token budget is the tighter one: about 6 requests a second.
    probe = RateLimitedOpenAI(rpm=10**6, tpm=10**9)
    (tmp_path / "probe").mkdir()
    with serving(probe, monkeypatch):
        _run(tmp_path / "probe", probe, 1, 1)
        per_request = probe.stats()["tokens_used"]
    tpm = int(per_request * 6 * 60)
    server = RateLimitedOpenAI(rpm=10**6, tpm=tpm, window_s=1.0, latency=0.05)
    with serving(server, monkeypatch):
        s = _run(tmp_path, server, 30, 16)
        stats = server.stats()
    assert s.done == 30 and s.failed == 0, s.line()
    assert stats["limited"] <= 3, stats
