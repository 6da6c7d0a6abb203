"""A loopback server for the OpenAI Files and Batch APIs (and chat completions, for online retries).

* ``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``
* ``POST /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``
* ``POST /v1/chat/completions``

A batch is ``in_progress`` for ``delay`` seconds after it is created, then ``completed`` (or
``expired`` when ``expire`` is set: only the first half of its requests have a result). How each
request is answered is scripted per class name (``line_script``): ``ok``, ``schema`` (wrong number
of phrases: invalid), ``malformed`` (content that is not JSON: invalid), ``fail`` (a 500 in the
error file) or ``garbage`` (an output line that is not JSON at all). Online answers are scripted
with ``chat_script`` (``ok``, ``schema``, ``hang``), the last action repeating.
"""

from __future__ import annotations

import email.parser
import itertools
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.descgen.fake_openai import _CLASS_RE, _check_body, _completion, _content

API_KEY = "sk-batch-test-0123456789SECRET"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class FakeBatchAPI:
    def __init__(self, delay: float = 0.0, api_key: str = API_KEY):
        self.api_key = api_key
        self.delay = delay
        self.expire = False
        self.files: dict[str, dict[str, Any]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.line_script: dict[str, str] = {}
        self.chat_script: dict[str, list[str]] = {}
        self.chat_log: list[str] = []
        self.downloads = 0
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._httpd: _Server | None = None

    # ------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeBatchAPI:
        self._httpd = _Server(("127.0.0.1", 0), _handler(self))
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    def finish_all(self) -> None:
        """Let every batch finish now."""
        for b in self.batches.values():
            b["_ready_at"] = 0.0

    def _new_id(self, prefix: str) -> str:
        with self._lock:
            return f"{prefix}-{next(self._ids):04d}"

    # ------------------------------------------------------------------ files
    def add_file(self, data: bytes, purpose: str, name: str = "upload.jsonl") -> dict[str, Any]:
        fid = self._new_id("file")
        self.files[fid] = {"data": data, "purpose": purpose, "filename": name, "created_at": int(time.time())}
        return self.file_object(fid)

    def file_object(self, fid: str) -> dict[str, Any]:
        f = self.files[fid]
        return {
            "id": fid,
            "object": "file",
            "bytes": len(f["data"]),
            "created_at": f["created_at"],
            "filename": f["filename"],
            "purpose": f["purpose"],
            "status": "processed",
        }

    # ------------------------------------------------------------------ batches
    def create_batch(self, body: dict) -> dict[str, Any]:
        bid = self._new_id("batch")
        self.batches[bid] = {
            "id": bid,
            "object": "batch",
            "endpoint": body["endpoint"],
            "input_file_id": body["input_file_id"],
            "completion_window": body["completion_window"],
            "metadata": body.get("metadata"),
            "created_at": int(time.time()),
            "status": "validating",
            "_ready_at": time.time() + self.delay,
            "_expire": self.expire,
        }
        return self.batch_object(bid)

    def cancel_batch(self, bid: str) -> dict[str, Any]:
        b = self.batches[bid]
        if b["status"] not in ("completed", "expired", "failed"):
            b["status"] = "cancelled"
            b["_done"] = True
            self._write_results(b, [])
        return self.batch_object(bid)

    def batch_object(self, bid: str) -> dict[str, Any]:
        b = self.batches[bid]
        if not b.get("_done"):
            if time.time() >= b["_ready_at"]:
                self._finish(b)
            else:
                b["status"] = "in_progress"
        out = {k: v for k, v in b.items() if not k.startswith("_")}
        total = len(self._input_lines(b))
        out["request_counts"] = {
            "total": total,
            "completed": b.get("_completed", 0),
            "failed": b.get("_failed", 0),
        }
        return out

    def _input_lines(self, b: dict) -> list[dict]:
        data = self.files[b["input_file_id"]]["data"].decode("utf-8")
        return [json.loads(line) for line in data.splitlines() if line.strip()]

    def _finish(self, b: dict) -> None:
        lines = self._input_lines(b)
        if b["_expire"]:
            lines = lines[: len(lines) // 2]
        b["status"] = "expired" if b["_expire"] else "completed"
        b["_done"] = True
        self._write_results(b, lines)

    def _write_results(self, b: dict, lines: list[dict]) -> None:
        out, err = [], []
        for req in lines:
            name = _class_name(req["body"]["messages"])
            action = self.line_script.get(name, "ok")
            if action == "garbage":
                out.append('{"id": "batch_req_x", "custom_id": ')
                continue
            target = err if action == "fail" else out
            target.append(json.dumps(_result_line(req, action, name)))
        b["_completed"], b["_failed"] = len(out), len(err)
        b["output_file_id"] = (
            self.add_file(("\n".join(out) + "\n").encode(), "batch_output")["id"] if out else None
        )
        b["error_file_id"] = (
            self.add_file(("\n".join(err) + "\n").encode(), "batch_output")["id"] if err else None
        )

    # ------------------------------------------------------------------ chat
    def chat_action(self, name: str) -> str:
        with self._lock:
            self.chat_log.append(name)
            actions = self.chat_script.get(name, ["ok"])
            return actions.pop(0) if len(actions) > 1 else actions[0]


def _result_line(req: dict, action: str, name: str) -> dict[str, Any]:
    """A line of the output (or error) file, in the Batch API's format (vLLM's run_batch writes the same)."""
    body = req["body"]
    n = body["response_format"]["json_schema"]["schema"]["properties"]["spatial"]["minItems"]
    if action == "fail":
        response = {"status_code": 500, "request_id": "req_x", "body": {"error": {"message": "server error"}}}
    else:
        response = {
            "status_code": 200,
            "request_id": "req_x",
            "body": _completion(body, _content(action, name, n)),
        }
    return {"id": f"batch_req_{abs(hash(req['custom_id'])) % 10**8}", "custom_id": req["custom_id"],
            "response": response, "error": None}  # fmt: skip


def _class_name(messages: list[dict]) -> str:
    user = "\n".join(m["content"] for m in messages if m["role"] == "user")
    return _CLASS_RE.search(user).group(1)


def _multipart(headers: Any, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """{field name: (file name, content)} of a multipart/form-data body."""
    raw = f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body
    msg = email.parser.BytesParser().parsebytes(raw)
    out = {}
    for part in msg.get_payload():
        name = part.get_param("name", header="content-disposition")
        out[name] = (part.get_filename(), part.get_payload(decode=True))
    return out


def _handler(fake: FakeBatchAPI) -> type[BaseHTTPRequestHandler]:
    return type("Handler", (_Handler,), {"fake": fake})


class _Handler(BaseHTTPRequestHandler):
    fake: FakeBatchAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/octet-stream" if raw is not None else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {self.fake.api_key}":
            self._send(401, {"error": {"message": "bad key", "type": "invalid_request_error"}})
            return False
        return True

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self) -> None:
        fake = self.fake
        if not self._authorized():
            return
        parts = self.path.split("?")[0].strip("/").split("/")  # v1, files|batches, id, [content]
        if parts[1] == "files" and parts[2] in fake.files:
            if len(parts) == 4:
                fake.downloads += 1
                return self._send(200, None, raw=fake.files[parts[2]]["data"])
            return self._send(200, fake.file_object(parts[2]))
        if parts[1] == "batches" and parts[2] in fake.batches:
            return self._send(200, fake.batch_object(parts[2]))
        self._send(404, {"error": {"message": f"no such object {self.path}"}})

    def do_POST(self) -> None:
        fake = self.fake
        body = self._body()
        if not self._authorized():
            return
        parts = self.path.strip("/").split("/")
        if parts[1] == "files":
            form = _multipart(self.headers, body)
            return self._send(
                200, fake.add_file(form["file"][1], form["purpose"][1].decode(), form["file"][0])
            )
        if parts[1] == "batches" and len(parts) == 2:
            req = json.loads(body)
            if req.get("input_file_id") not in fake.files:
                return self._send(400, {"error": {"message": "no such input file"}})
            return self._send(200, fake.create_batch(req))
        if parts[1] == "batches" and parts[-1] == "cancel" and parts[2] in fake.batches:
            return self._send(200, fake.cancel_batch(parts[2]))
        if parts[1:] == ["chat", "completions"]:
            return self._chat(json.loads(body))
        self._send(404, {"error": {"message": f"no route {self.path}"}})

    def _chat(self, req: dict) -> None:
        fake = self.fake
        problem = _check_body(req)
        if problem:
            return self._send(400, {"error": {"message": problem}})
        name = _class_name(req["messages"])
        action = fake.chat_action(name)
        if action == "hang":
            time.sleep(30)
        n = req["response_format"]["json_schema"]["schema"]["properties"]["spatial"].get("minItems", 2)
        self._send(200, _completion(req, _content(action, name, n)))
