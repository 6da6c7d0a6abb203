"""Pacing requests by the rate-limit headers of OpenAI-compatible servers.

Hosted APIs report, on every response, what is left of the per-minute request and token budgets
(``x-ratelimit-remaining-requests`` / ``-tokens``), the size of those budgets
(``x-ratelimit-limit-*``) and how long until they are full again (``x-ratelimit-reset-*``, durations
such as ``12ms``, ``1m30s`` or ``6s``). The budgets refill continuously, so they behave like token
buckets: :class:`Pacer` keeps one local bucket per dimension, corrects it with each response, and
makes a request wait before it is sent until both buckets hold its cost. Requests are thus spread at
the rate the server allows instead of running into 429s and backing off.

A server that sends none of these headers is never paced.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d)")
DEFAULT_WINDOW_S = 60.0  # the budgets of the headers are per minute
MAX_WAIT_S = 120.0
FIRST_ANSWER_WAIT_S = 5.0  # the most the other requests wait for the first answer


def parse_duration(value: Any) -> float | None:
    """Seconds in a rate-limit reset duration: ``12ms``, ``6s``, ``1m30s``, ``2h0m0.5s``, ``0.5``
    (a bare number is seconds). None for anything else."""
    if value is None:
        return None
    text = str(value).strip().lower().replace(" ", "")
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if seconds >= 0 and seconds == seconds and seconds != float("inf") else None
    pos, total = 0, 0.0
    for m in _PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def _number(headers: Mapping[str, Any], name: str) -> float | None:
    try:
        value = headers.get(name)
    except Exception:
        return None
    if value is None:
        return None
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if number >= 0 and number != float("inf") else None


@dataclass
class Budget:
    """One dimension of the headers: what is left, the size of the budget, seconds until full."""

    remaining: float
    limit: float | None
    reset_s: float | None


def read_budgets(headers: Mapping[str, Any] | None) -> dict[str, Budget]:
    """``{"requests": Budget, "tokens": Budget}`` for the dimensions the headers report."""
    out: dict[str, Budget] = {}
    if headers is None:
        return out
    for dim in ("requests", "tokens"):
        remaining = _number(headers, f"x-ratelimit-remaining-{dim}")
        if remaining is None:
            continue
        try:
            reset = parse_duration(headers.get(f"x-ratelimit-reset-{dim}"))
        except Exception:
            reset = None
        out[dim] = Budget(remaining, _number(headers, f"x-ratelimit-limit-{dim}"), reset)
    return out


class _Bucket:
    """The local estimate of one server budget, refilled at ``rate`` units per second."""

    def __init__(self) -> None:
        self.level = float("inf")  # unknown until a response reports it: never wait
        self.capacity = float("inf")
        self.rate: float | None = None
        self.t = time.monotonic()

    def refill(self, now: float) -> None:
        if self.rate and self.level < self.capacity:
            self.level = min(self.capacity, self.level + self.rate * (now - self.t))
        self.t = now

    def observe(self, b: Budget, pending: float, now: float) -> None:
        """Correct the estimate with a response's budget; ``pending``: the cost of the requests
        sent and not yet answered (the server may not have counted them yet)."""
        self.refill(now)
        if b.limit:
            self.capacity = b.limit
            rate = None
            if b.reset_s and b.limit > b.remaining:
                rate = (b.limit - b.remaining) / b.reset_s
            self.rate = rate or self.rate or b.limit / DEFAULT_WINDOW_S
        server = b.remaining - pending
        # The server's figure is older than its arrival here (refills since then are unknown):
        # trust it where it is lower than the local estimate.
        self.level = server if self.level == float("inf") else min(self.level, server)
        if b.remaining < 1 and b.reset_s:
            self.rate = self.rate or 1.0 / b.reset_s

    def wait(self, cost: float, now: float) -> float:
        self.refill(now)
        cost = min(cost, self.capacity)
        if self.level >= cost:
            return 0.0
        if not self.rate:
            return 0.0
        return (cost - self.level) / self.rate


class Pacer:
    """Makes each request wait for its share of the server's request and token budgets."""

    def __init__(self) -> None:
        self._buckets = {"requests": _Bucket(), "tokens": _Bucket()}
        self._pending = {"requests": 0.0, "tokens": 0.0}
        self._lock = asyncio.Lock()
        self._answered = asyncio.Event()  # set by the first answer
        self.waited_s = 0.0  # total time requests were held back

    async def acquire(self, tokens: float) -> float:
        """Wait until a request of ``tokens`` estimated tokens may be sent; take its cost. Returns
        the cost to hand back to :meth:`release`."""
        cost = {"requests": 1.0, "tokens": float(tokens)}
        async with self._lock:  # one request at a time takes the budget: starts are spread out
            if not self._answered.is_set() and self._pending["requests"] > 0:
                # Nothing is known of the budgets until the first answer: a full burst of
                # requests could meet an empty budget. One latency spent once.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._answered.wait(), FIRST_ANSWER_WAIT_S)
                self._answered.set()  # waited once: a slow server is not made to wait again
            while True:
                now = time.monotonic()
                delay = max(self._buckets[d].wait(c, now) for d, c in cost.items())
                if delay <= 0:
                    break
                delay = min(delay, MAX_WAIT_S)
                self.waited_s += delay
                await asyncio.sleep(delay)
            for d, c in cost.items():
                self._buckets[d].level -= c
                self._pending[d] += c
        return cost["tokens"]

    def release(self, tokens: float, headers: Mapping[str, Any] | None, limited: bool = False) -> None:
        """The request's answer came (any status): correct the buckets with its headers.
        ``limited``: the answer was a 429, so nothing is left right now, whatever the headers say."""
        self._answered.set()
        self._pending["requests"] = max(0.0, self._pending["requests"] - 1.0)
        self._pending["tokens"] = max(0.0, self._pending["tokens"] - tokens)
        now = time.monotonic()
        for dim, budget in read_budgets(headers).items():
            self._buckets[dim].observe(budget, self._pending[dim], now)
        if limited:
            for b in self._buckets.values():
                if b.level != float("inf"):
                    b.level = min(b.level, 0.0)


CHARS_PER_TOKEN = 4  # a plain estimate: about four characters per token for English text


def text_tokens(chars: int) -> int:
    """Tokens of a text of ``chars`` characters, estimated (rounded up, so any text counts)."""
    return -(-chars // CHARS_PER_TOKEN)


def estimate_tokens(messages: list[dict[str, Any]], max_tokens: int | None) -> int:
    """What a server counts against the token budget: the prompt (:func:`text_tokens` of its
    characters) and the most the answer may take."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return text_tokens(chars) + int(max_tokens or 0)
