"""A loopback HTTP server that speaks the OpenAI chat-completions wire format.

It stands in for the hosted API, which tests cannot reach. It checks what a real server checks
(the bearer key, the request body, ``response_format`` with a strict json_schema) and can be told,
per class name and per attempt, how to answer:

``ok``          valid JSON with N distinct phrases per kind, derived from the class name
``429[:S]``     429 with ``Retry-After: S`` (default 1)
``500``/``503`` a server error (the error message contains the caller's Authorization header,
                so tests can check that it is scrubbed)
``hang``        no answer until the client gives up (or the server stops)
``malformed``   content that is not JSON
``schema``      JSON with the wrong number of phrases
``dup``         JSON whose two spatial phrases differ only in case and spacing
``401``         an authentication error

Run it in its own process with ``python -m tests.descgen.fake_openai --latency 0.2``: it prints its
base URL; ``GET /_stats`` returns the request count and the peak number of requests in flight,
``GET /_reset`` clears them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

DEFAULT_KEY = "sk-test-0123456789abcdefSECRET"
_CLASS_RE = re.compile(r'[Aa]ction class:? "(.+?)"')


def phrases_for(class_name: str, n: int) -> dict[str, list[str]]:
    """The deterministic answer for a class."""
    h = hashlib.sha256(class_name.encode("utf-8")).hexdigest()[:6]
    base = class_name.lower()
    return {
        "spatial": [f"visible detail {i + 1} of {base} ({h})" for i in range(n)],
        "temporal": [f"step {i + 1} of {base}" for i in range(n)],
    }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    allow_reuse_address = True


class FakeOpenAI:
    def __init__(
        self,
        api_key: str = DEFAULT_KEY,
        latency: float = 0.0,
        default: str = "ok",
        hang_s: float = 60.0,
    ):
        self.api_key = api_key
        self.latency = latency
        self.default = default
        self.hang_s = hang_s
        self._script: dict[str, list[str]] = {}
        self._seen: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control
    def script(self, class_name: str, *actions: str) -> None:
        """Answers for successive requests of a class; the last one repeats."""
        with self._lock:
            self._script[class_name] = list(actions)

    def reset_log(self) -> None:
        with self._lock:
            self.log.clear()
            self._seen.clear()
            self.max_in_flight = 0

    def count(self, class_name: str | None = None) -> int:
        with self._lock:
            if class_name is None:
                return len(self.log)
            return sum(1 for e in self.log if e["class_name"] == class_name)

    def entries(self, class_name: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self.log if class_name is None or e["class_name"] == class_name]

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class; a server with other behaviour returns its own."""
        return _make_handler(self)

    def start(self) -> Self:
        self._stop.clear()
        self._httpd = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ behaviour
    def _next_action(self, class_name: str) -> tuple[str, int]:
        with self._lock:
            i = self._seen[class_name]
            self._seen[class_name] += 1
            actions = self._script.get(class_name)
        if not actions:
            return self.default, i
        return actions[min(i, len(actions) - 1)], i

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.log.append(entry)


def _make_handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out at once, as from a real server

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"error": {"message": message, "type": "fake_error", "code": status}}, headers)

        def do_GET(self) -> None:
            if self.path == "/_stats":  # for a server running in another process
                with fake._lock:
                    stats = {"requests": len(fake.log), "max_in_flight": fake.max_in_flight}
                self._send(200, stats)
            elif self.path == "/_reset":
                fake.reset_log()
                self._send(200, {"reset": True})
            elif self.path.rstrip("/") == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
            else:
                self._error(404, "not found")

        def do_POST(self) -> None:
            arrived = time.monotonic()
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            entry: dict[str, Any] = {"t": arrived, "class_name": None, "action": None, "seed": None}
            if self.path.rstrip("/") != "/v1/chat/completions":
                entry["action"] = "404"
                fake._record(entry)
                self._error(404, f"unknown path {self.path}")
                return
            if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                entry["action"] = "401"
                fake._record(entry)
                self._error(401, "Incorrect API key provided")
                return
            try:
                body = json.loads(raw)
                problem = _check_body(body)
            except json.JSONDecodeError:
                body, problem = {}, "request body is not JSON"
            if problem:
                entry["action"] = "bad_request"
                entry["problem"] = problem
                fake._record(entry)
                self._error(400, problem)
                return
            user = "\n".join(m.get("content", "") for m in body["messages"] if m.get("role") == "user")
            m = _CLASS_RE.search(user)
            class_name = m.group(1) if m else hashlib.sha256(user.encode()).hexdigest()[:12]
            n = body["response_format"]["json_schema"]["schema"]["properties"]["spatial"].get("minItems", 2)
            action, index = fake._next_action(class_name)
            entry.update(
                class_name=class_name,
                action=action,
                index=index,
                seed=body.get("seed"),
                temperature=body.get("temperature"),
                max_tokens=body.get("max_completion_tokens", body.get("max_tokens")),
                model=body.get("model"),
            )
            fake._record(entry)
            with fake._lock:
                fake.in_flight += 1
                fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
            try:
                self._answer(fake, action, class_name, n, body)
            finally:
                with fake._lock:
                    fake.in_flight -= 1

        def _answer(self, fake: FakeOpenAI, action: str, class_name: str, n: int, body: dict) -> None:
            if fake.latency and fake._stop.wait(fake.latency):
                return
            auth = self.headers.get("Authorization", "")
            kind, _, arg = action.partition(":")
            if kind == "429":
                self._error(429, "Rate limit reached, slow down", {"Retry-After": arg or "1"})
            elif kind in ("500", "502", "503"):
                self._error(int(kind), f"internal error while serving request with {auth}")
            elif kind == "401":
                self._error(401, f"Incorrect API key provided: {auth}")
            elif kind == "hang":
                fake._stop.wait(fake.hang_s)
                self._error(504, "gave up")
            else:
                content = _content(kind, class_name, n)
                self._send(200, _completion(body, content))

    return Handler


def _check_body(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "request body must be a JSON object"
    if not body.get("model"):
        return "model is required"
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and "role" in m for m in msgs):
        return "messages must be a non-empty list of messages"
    rf = body.get("response_format")
    if not isinstance(rf, dict) or rf.get("type") != "json_schema":
        return "response_format of type json_schema is required"
    js = rf.get("json_schema")
    if not isinstance(js, dict) or not js.get("name") or not isinstance(js.get("schema"), dict):
        return "response_format.json_schema needs a name and a schema"
    if js.get("strict") is not True:
        return "response_format.json_schema.strict must be true"
    props = js["schema"].get("properties", {})
    if not {"spatial", "temporal"} <= set(props):
        return "schema must have spatial and temporal properties"
    return None


def _content(kind: str, class_name: str, n: int) -> str:
    answer = phrases_for(class_name, n)
    if kind == "malformed":
        return '{"spatial": ["unterminated'
    if kind == "schema":
        return json.dumps(
            {"spatial": answer["spatial"][:1], "temporal": answer["temporal"] + ["one step too many"]}
        )
    if kind == "dup":
        sp = answer["spatial"]
        sp = [sp[0], "  " + sp[0].upper() + " "] + sp[2:]
        return json.dumps({"spatial": sp, "temporal": answer["temporal"]})
    return json.dumps(answer)


def _completion(body: dict, content: str) -> dict:
    prompt_chars = sum(len(str(m.get("content", ""))) for m in body["messages"])
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body["model"],
        "system_fingerprint": "fp_fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_chars // 4,
            "completion_tokens": len(content) // 4,
            "total_tokens": prompt_chars // 4 + len(content) // 4,
        },
    }


def server_arguments(description: str) -> argparse.ArgumentParser:
    """The command line of a server script: ``--latency`` and ``--key``; callers add their own."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--key", default=DEFAULT_KEY)
    return ap


def serve_until_interrupted(fake: FakeOpenAI) -> None:
    """Start FAKE, print its base URL and serve until Ctrl-C."""
    fake.start()
    print(fake.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        fake.stop()


def main() -> None:
    args = server_arguments("Serve a fake OpenAI chat-completions API on loopback.").parse_args()
    serve_until_interrupted(FakeOpenAI(api_key=args.key, latency=args.latency))


if __name__ == "__main__":
    main()
