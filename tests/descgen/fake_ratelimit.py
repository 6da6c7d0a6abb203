"""The loopback OpenAI server with per-minute request and token limits, enforced like a hosted API.

Each budget is a token bucket holding one minute's worth (``rpm`` requests, ``tpm`` tokens) that
refills continuously. A request costs one request and its prompt (4 characters a token) plus its
``max_completion_tokens``; when either bucket cannot pay, the answer is a 429. Every answer carries
``x-ratelimit-limit-*``, ``x-ratelimit-remaining-*`` and ``x-ratelimit-reset-*`` (time until full,
written like ``1m30s`` or ``120ms``).

    python -m tests.descgen.fake_ratelimit --rate-limit 600,200000 --latency 0.2

prints its base URL; ``GET /_stats`` adds ``ok``, ``limited`` (429s), ``first_ok`` and ``last_ok``
(server clock, seconds) to the plain server's figures.
"""

from __future__ import annotations

import io
import json
import time
from typing import Any

from tests.descgen.fake_openai import FakeOpenAI, _make_handler, serve_until_interrupted, server_arguments


def format_duration(seconds: float) -> str:
    """``1m30s``, ``6s``, ``120ms``: how hosted APIs write the reset durations."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    minutes, rest = divmod(seconds, 60.0)
    return f"{int(minutes)}m{rest:.3g}s" if minutes else f"{rest:.3g}s"


class _Bucket:
    def __init__(self, per_minute: float, window_s: float, start_full: bool):
        self.rate = per_minute / 60.0
        self.limit = float(max(1, round(self.rate * window_s)))
        self.level = self.limit if start_full else 0.0
        self.t = time.monotonic()

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + self.rate * (now - self.t))
        self.t = now

    def headers(self, dim: str) -> dict[str, str]:
        return {
            f"x-ratelimit-limit-{dim}": str(int(self.limit)),
            f"x-ratelimit-remaining-{dim}": str(max(0, int(self.level))),
            f"x-ratelimit-reset-{dim}": format_duration((self.limit - self.level) / self.rate),
        }


class RateLimitedOpenAI(FakeOpenAI):
    def __init__(self, rpm: int, tpm: int, window_s: float = 60.0, start_full: bool = True, **kwargs: Any):
        """``window_s``: the burst a full bucket allows, in seconds of the rate (a minute, as the
        hosted API reports; tests use a shorter one so that pacing starts sooner)."""
        super().__init__(**kwargs)
        self.rpm, self.tpm, self.window_s, self.start_full = rpm, tpm, window_s, start_full
        self._reset_buckets()

    def _reset_buckets(self) -> None:
        self.buckets = {
            dim: _Bucket(limit, self.window_s, self.start_full)
            for dim, limit in (("requests", self.rpm), ("tokens", self.tpm))
        }
        self.ok = 0
        self.limited = 0
        self.tokens_used = 0.0
        self.first_ok: float | None = None
        self.last_ok: float | None = None

    def reset_log(self) -> None:
        super().reset_log()
        with self._lock:
            self._reset_buckets()

    def admit(self, tokens: float) -> tuple[bool, dict[str, str]]:
        """Take the cost of one request, or refuse it; the rate-limit headers of the answer."""
        with self._lock:
            now = time.monotonic()
            req, tok = self.buckets["requests"], self.buckets["tokens"]
            req.refill(now)
            tok.refill(now)
            ok = req.level >= 1 and tok.level >= min(tokens, tok.limit)
            if ok:
                req.level -= 1
                tok.level -= tokens
                self.tokens_used += tokens
                self.ok += 1
                self.first_ok = now if self.first_ok is None else self.first_ok
                self.last_ok = now
            else:
                self.limited += 1
            headers = {**req.headers("requests"), **tok.headers("tokens")}
            if not ok:
                wait = max((1 - req.level) / req.rate, (tokens - tok.level) / tok.rate, 0.001)
                headers["retry-after-ms"] = str(int(wait * 1000) + 1)
            return ok, headers

    def stats(self) -> dict[str, Any]:
        """Counts, and the request rate and burst the limits allow for requests of the mean cost."""
        with self._lock:
            req, tok = self.buckets["requests"], self.buckets["tokens"]
            per = self.tokens_used / self.ok if self.ok else 1.0
            return {
                "allowed_rate": min(req.rate, tok.rate / per),
                "burst": min(req.limit, tok.limit / per),
                "tokens_used": int(self.tokens_used),
                "requests": len(self.log),
                "max_in_flight": self.max_in_flight,
                "ok": self.ok,
                "limited": self.limited,
                "first_ok": self.first_ok,
                "last_ok": self.last_ok,
            }

    def _handler(self) -> type:
        return _limited_handler(self)


def _limited_handler(fake: RateLimitedOpenAI) -> type:
    base = _make_handler(fake)

    class Handler(base):  # type: ignore[misc, valid-type]
        _extra: dict[str, str] | None = None

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            super()._send(status, body, {**(headers or {}), **(self._extra or {})})

        def do_GET(self) -> None:
            if self.path == "/_stats":
                self._extra = None
                self._send(200, fake.stats())
            else:
                super().do_GET()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw)
                chars = sum(len(str(m.get("content", ""))) for m in body["messages"])
                tokens = chars // 4 + 1 + int(body.get("max_completion_tokens") or 0)
            except (ValueError, KeyError, TypeError, AttributeError):
                tokens = 1
            ok, self._extra = fake.admit(tokens)
            if not ok:
                self._error(429, "Rate limit reached for requests, slow down")
                return
            real = self.rfile
            self.rfile = io.BytesIO(raw)  # the plain server reads the body again
            try:
                super().do_POST()
            finally:
                self.rfile = real

    return Handler


def main() -> None:
    ap = server_arguments("Serve a rate-limited fake OpenAI API on loopback.")
    ap.add_argument("--rate-limit", required=True, help="RPM,TPM")
    ap.add_argument("--window", type=float, default=60.0, help="burst size, in seconds of the rate")
    args = ap.parse_args()
    rpm, tpm = (int(x) for x in args.rate_limit.split(","))
    serve_until_interrupted(RateLimitedOpenAI(rpm, tpm, args.window, api_key=args.key, latency=args.latency))


if __name__ == "__main__":
    main()
