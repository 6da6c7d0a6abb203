"""Backend for the OpenAI chat-completions API and any compatible server (``--base-url``).

* The API key comes from the environment only (``OPENAI_API_KEY``). A server given with
  ``base_url`` and no key gets a placeholder key, as local servers (e.g. ``vllm serve``) expect.
* Structured output: ``response_format={"type": "json_schema", "json_schema": {..., "strict": True}}``.
* Requests run on one asyncio loop in the calling thread with at most ``concurrency`` in flight.
  Each attempt has a hard timeout. 429, 5xx, timeouts and connection errors are retried with
  exponential backoff and jitter, honouring ``Retry-After``, up to ``max_attempts`` attempts. The
  SDK's own retries are disabled.
* Requests are paced by the server's rate-limit headers (``x-ratelimit-remaining-*``,
  ``x-ratelimit-reset-*``; see :mod:`descgen.backends.ratelimit`): a request waits for its share of
  the request and token budgets before it is sent, so that 429s stay rare.
* ``on_done`` is called on the loop, in the calling thread, as each request finishes.
* Secrets never appear in error messages (they are scrubbed).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import ssl
import time
from collections.abc import Callable
from typing import Any

from descgen.backends import scrub_secrets
from descgen.backends.base import BackendError, Request, Response
from descgen.backends.ratelimit import Pacer, estimate_tokens

API_KEY_ENV = "OPENAI_API_KEY"
PLACEHOLDER_KEY = "EMPTY"
DEFAULT_MODEL = "gpt-4o-mini"
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 120.0
CONNECTIONS_PER_CLIENT = 4


class _Retryable(Exception):
    """A failure that a later attempt may not see (rate limit, server error, timeout, network)."""

    def __init__(self, message: str, retry_after: float | None = None, unreachable: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.unreachable = unreachable  # no HTTP answer at all (connection refused, DNS, ...)


class _Fatal(Exception):
    """A failure that another attempt would not fix (bad request, authentication, unknown model)."""

    def __init__(self, message: str, every_request: bool = False):
        super().__init__(message)
        self.every_request = every_request  # the same failure awaits every other request


def parse_retry_after(headers: Any) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    try:
        ms = headers.get("retry-after-ms")
        if ms is not None:
            return max(0.0, float(ms) / 1000.0)
        value = headers.get("retry-after")
    except Exception:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


class OpenAIBackend:
    name = "openai"
    default_model: str | None = DEFAULT_MODEL
    model_hint = ""
    option_names = ("base_url", "concurrency", "timeout", "max_attempts")

    @classmethod
    def from_options(cls, model: str, options: dict[str, Any]) -> OpenAIBackend:
        return cls(model=model, **{k: v for k, v in options.items() if k in cls.option_names})

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        concurrency: int = 8,
        timeout: float = 60.0,
        max_attempts: int = 5,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        **_ignored: Any,
    ):
        if concurrency < 1:
            raise BackendError("--concurrency must be at least 1")
        if timeout <= 0:
            raise BackendError("--timeout must be positive")
        if max_attempts < 1:
            raise BackendError("--max-attempts must be at least 1")
        key = os.environ.get(API_KEY_ENV, "").strip()
        if not key:
            if base_url is None:
                raise BackendError(
                    f"no API key: set the environment variable {API_KEY_ENV}, "
                    "or give --base-url for a server that needs none"
                )
            key = PLACEHOLDER_KEY
        try:
            import openai  # noqa: F401
        except ImportError:  # pragma: no cover - openai is a core dependency
            raise BackendError("the openai package is not installed: pip install openai") from None
        self.model = model or DEFAULT_MODEL
        self.base_url = base_url
        self.concurrency = concurrency
        self.timeout = float(timeout)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._key = key

    def __repr__(self) -> str:  # never show the key
        return (
            f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r}, concurrency={self.concurrency})"
        )

    # ------------------------------------------------------------------ public
    def run(self, requests: list[Request], on_done: Callable[[Response], None]) -> None:
        if not requests:
            return
        asyncio.run(self._run_all(requests, on_done))

    # ------------------------------------------------------------------ internals
    def _scrub(self, text: str) -> str:
        return scrub_secrets(text, extra=(self._key,)) or ""

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        """Delay before attempt ``attempt + 1``; at least Retry-After when the server gave one."""
        expo = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        delay = expo * random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = min(retry_after, MAX_RETRY_AFTER_S) + random.uniform(0.0, 0.1 * max(0.1, expo))
        return delay

    async def _run_all(self, requests: list[Request], on_done: Callable[[Response], None]) -> None:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient

        # ``concurrency`` workers take requests from one queue, so at most that many are in flight.
        # Workers share clients in groups of CONNECTIONS_PER_CLIENT: the HTTP connection pool does
        # per-request bookkeeping over all of its connections, which costs more CPU than the
        # request itself when one pool holds dozens of connections.
        self._answered = 0  # requests the server answered (any status but the fatal ones below)
        self._abort_reason: str | None = None
        self.pacer = Pacer()
        workers = min(self.concurrency, len(requests))
        n_clients = -(-workers // CONNECTIONS_PER_CLIENT)
        tls = ssl.create_default_context()  # built once: loading the CA store costs ~0.1 s per client
        clients = [
            AsyncOpenAI(
                api_key=self._key,
                base_url=self.base_url,
                max_retries=0,
                timeout=self.timeout,
                http_client=DefaultAsyncHttpxClient(verify=tls),
            )
            for _ in range(n_clients)
        ]
        queue: asyncio.Queue[Request] = asyncio.Queue()
        for r in requests:
            queue.put_nowait(r)

        async def worker(client: Any) -> None:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                if self._abort_reason is not None:
                    resp = Response(key=req.key, error=f"not sent: {self._abort_reason}", attempts=0)
                else:
                    resp = await self._request_with_retries(client, req)
                on_done(resp)

        tasks = [asyncio.create_task(worker(clients[i % n_clients])) for i in range(workers)]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            for c in clients:
                await c.close()

    async def _request_with_retries(self, client: Any, req: Request) -> Response:
        start = time.perf_counter()
        last_error = "no attempt made"
        attempt = 0
        while attempt < self.max_attempts:
            attempt += 1
            try:
                resp = await self._attempt(client, req)
                resp.attempts = attempt
                resp.latency_s = time.perf_counter() - start
                self._answered += 1
                return resp
            except _Retryable as exc:
                last_error = str(exc)
                if exc.unreachable and attempt >= self.max_attempts and self._answered == 0:
                    # Never reached the server, and no request has: the others would fail alike.
                    self._abort_reason = last_error
                if not exc.unreachable:
                    self._answered += 1
                if attempt >= self.max_attempts:
                    break
                await asyncio.sleep(self._backoff(attempt, exc.retry_after))
            except _Fatal as exc:
                last_error = str(exc)
                if exc.every_request and self._answered == 0:
                    # A wrong key, model or URL fails every request the same way.
                    self._abort_reason = last_error
                break
        return Response(
            key=req.key,
            error=self._scrub(f"{last_error} (after {attempt} attempt{'s' if attempt != 1 else ''})"),
            attempts=attempt,
            latency_s=time.perf_counter() - start,
        )

    async def _attempt(self, client: Any, req: Request) -> Response:
        import httpx2
        import openai

        body = self._body(req)
        tokens = await self.pacer.acquire(estimate_tokens(req.messages, req.max_tokens))
        t0 = time.perf_counter()
        headers, limited = None, False
        try:
            # The same request as ``client.chat.completions.create(**body)``, sent through the
            # client's generic ``post`` and read as the raw HTTP response: this skips the SDK's
            # walk over the typed parameters and its response models (about 40% of the client's
            # CPU time per request), which matters at high concurrency. Authentication, timeouts
            # and the mapping of HTTP errors to exceptions are the SDK's own.
            raw = await asyncio.wait_for(
                client.post("/chat/completions", body=body, cast_to=httpx2.Response),
                timeout=self.timeout + 1.0,
            )
            headers = raw.headers
        except (TimeoutError, openai.APITimeoutError):
            raise _Retryable(f"timed out after {self.timeout:g} s") from None
        except openai.APIStatusError as exc:
            status = exc.status_code
            headers, limited = exc.response.headers, status == 429
            detail = _error_detail(exc)
            msg = self._scrub(f"HTTP {status}: {detail}" if detail else f"HTTP {status}")
            if status in RETRY_STATUS or status >= 500:
                raise _Retryable(msg, parse_retry_after(exc.response.headers)) from None
            raise _Fatal(msg, every_request=status in (401, 403, 404)) from None
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc.__context__
            detail = str(cause) if cause is not None and str(cause) else str(exc)
            raise _Retryable(
                self._scrub(f"cannot connect to the server: {detail}"), unreachable=True
            ) from None
        except openai.APIResponseValidationError as exc:
            raise _Fatal(self._scrub(f"malformed response from the server: {exc}")) from None
        except openai.OpenAIError as exc:
            raise _Fatal(self._scrub(f"{type(exc).__name__}: {exc}")) from None
        finally:
            self.pacer.release(tokens, headers, limited)
        return _parse_completion(req.key, raw.content, time.perf_counter() - t0)

    def _body(self, req: Request) -> dict[str, Any]:
        return request_body(self.model, req)


def request_body(model: str, req: Request) -> dict[str, Any]:
    """The chat-completions body of one request, structured output included (online and batch)."""
    return {
        "model": model,
        "messages": req.messages,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "max_completion_tokens": req.max_tokens,
        "seed": req.seed,
        "n": 1,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": req.schema_name, "schema": req.schema, "strict": True},
        },
    }


def _parse_completion(key: str, content: bytes, latency: float) -> Response:
    """A chat-completion body as a Response; _Retryable when it is not one."""
    try:
        data = json.loads(content)
        choice = data["choices"][0]
        message = choice["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Retryable("the server sent a response that is not a chat completion") from None
    text = message.get("content")
    refusal = message.get("refusal")
    usage = data.get("usage") or {}
    extra: dict[str, Any] = {"finish_reason": choice.get("finish_reason"), "latency_attempt_s": latency}
    if data.get("system_fingerprint"):
        extra["system_fingerprint"] = data["system_fingerprint"]
    if data.get("model"):
        extra["served_model"] = data["model"]
    if refusal:
        extra["refusal"] = refusal
        if text is None:
            text = json.dumps({"refusal": refusal})
    return Response(
        key=key,
        text=text if isinstance(text, str) or text is None else json.dumps(text),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        extra=extra,
    )


def _error_detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])[:300]
        if isinstance(err, str):
            return err[:300]
    msg = getattr(exc, "message", None) or str(exc)
    return str(msg)[:300]


def completion_response(key: str, body: Any) -> Response:
    """A chat-completion body (already parsed, e.g. from a batch output line) as a Response.

    Raises ValueError when it is not a chat completion.
    """
    try:
        return _parse_completion(key, json.dumps(body).encode("utf-8"), 0.0)
    except _Retryable as exc:
        raise ValueError(str(exc)) from None
