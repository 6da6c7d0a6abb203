"""The pacer waits for the first answer once, not once per request, when the server is slow."""

from __future__ import annotations

import asyncio

from descgen.backends import ratelimit
from descgen.backends.ratelimit import Pacer


def test_a_slow_first_answer_holds_requests_back_only_once(monkeypatch):
    monkeypatch.setattr(ratelimit, "FIRST_ANSWER_WAIT_S", 0.3)

    async def scenario() -> list[float]:
        pacer, loop = Pacer(), asyncio.get_running_loop()
        t0 = loop.time()
        starts = []
        for _ in range(5):  # no answer comes back during the whole scenario
            await pacer.acquire(10)
            starts.append(loop.time() - t0)
        return starts

    starts = asyncio.run(scenario())
    assert starts[0] < 0.1  # the first request goes at once
    assert 0.25 < starts[1] < 0.6  # the second waits for the first answer, up to the limit
    assert starts[-1] - starts[1] < 0.2, starts  # later ones are not held back again
