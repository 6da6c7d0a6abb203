"""Batch mode: the hosted Batch API, and batch files for vLLM's offline ``run_batch``.

Submitting writes one JSONL line per missing request (``custom_id`` encodes the set, the round
and the class; the body is exactly the online request, structured output included), uploads it
(``purpose=batch``), creates the batch and records the batch, its file and every request in the
cache before returning. A job over 50,000 requests or 200 MB is split into several batches.

Collecting downloads the output and error files and treats every line like an online answer:
validated, stored with its raw line, usage and provenance (batch id, custom id). The cache knows
which lines it stored, so collecting twice, or again after a crash half-way, stores nothing twice.
Invalid answers are requested again online (a new seed each time), up to ``max_invalid`` times;
a batch is marked collected only after that.

A batch file for vLLM (``--batch-file``) holds the same lines; its output (the same line format:
``{"id", "custom_id", "response": {"status_code", "body"}, "error"}``) is ingested with
:func:`collect_file`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from descgen.backends import Response, scrub_secrets
from descgen.backends.ratelimit import CHARS_PER_TOKEN, text_tokens
from descgen.datasets import ClassList
from descgen.errors import DescgenError
from descgen.plan import Plan
from descgen.pricing import load_price_table
from descgen.store import Store, StoreError

MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
FINAL_STATES = frozenset({"completed", "failed", "expired", "cancelled"})
API_KEY_ENV = "OPENAI_API_KEY"


class BatchError(DescgenError):
    """A batch cannot be submitted, found, refreshed or collected. The message is user-facing."""


@dataclass
class BatchLine:
    """One request of a batch: its id, its class and the JSONL line sent."""

    custom_id: str
    set_id: str
    class_name: str
    class_id: int
    round: int
    row: dict[str, Any]  # the request as the cache stores it
    line: bytes

    def record(self) -> dict[str, Any]:
        return {
            "custom_id": self.custom_id,
            "set_id": self.set_id,
            "class_name": self.class_name,
            "class_id": self.class_id,
            "round": self.round,
            "request": json.dumps(self.row, sort_keys=True, ensure_ascii=False),
        }


def custom_id_for(set_id: str, round_: int, class_name: str) -> str:
    """``<set id>/r<round>/<class name, percent-encoded>``."""
    return f"{set_id}/r{round_}/{urllib.parse.quote(class_name, safe='')}"


def parse_custom_id(custom_id: str) -> tuple[str, int, str]:
    """(set id, round, class name) of a custom id; ValueError when it is not one of ours."""
    set_id, r, name = custom_id.split("/", 2)
    if not r.startswith("r"):
        raise ValueError(custom_id)
    return set_id, int(r[1:]), urllib.parse.unquote(name)


# ---------------------------------------------------------------------- building the lines


def batch_lines(p: Plan, rounds: dict[str, int] | None = None) -> list[BatchLine]:
    """The JSONL lines of every class the plan sends; ``rounds`` gives a class's round (seed offset)."""
    from descgen.backends.openai_backend import request_body
    from descgen.generate import make_request, plan_messages, request_row

    schema = p.prompt.schema(p.n)
    messages = plan_messages(p)
    index = {name: i for i, name in enumerate(p.classes.names)}
    out = []
    for name in p.to_send:
        round_ = (rounds or {}).get(name, 0)
        req = make_request(p, name, messages[name], schema, round_)
        cid = custom_id_for(p.set_id, round_, name)
        line = {"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": request_body(p.model, req)}
        data = (json.dumps(line, ensure_ascii=False) + "\n").encode("utf-8")
        out.append(BatchLine(cid, p.set_id, name, index[name], round_, request_row(req), data))
    return out


def split_lines(
    lines: list[BatchLine], max_requests: int = MAX_REQUESTS, max_bytes: int = MAX_BYTES
) -> list[list[BatchLine]]:
    """Consecutive chunks of at most ``max_requests`` lines and ``max_bytes`` bytes each."""
    chunks: list[list[BatchLine]] = []
    current: list[BatchLine] = []
    size = 0
    for line in lines:
        if len(line.line) > max_bytes:
            raise BatchError(f"one request of {line.class_name!r} is larger than {max_bytes} bytes")
        if current and (len(current) >= max_requests or size + len(line.line) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(line)
        size += len(line.line)
    if current:
        chunks.append(current)
    return chunks


def _prepare(store: Store, p: Plan) -> list[str]:
    """Store the prompt and set; the classes to put in a new batch (not complete, not in an API batch).

    Classes of an uncollected batch file are written again: that file may be lost or abandoned.
    """
    store.ensure_prompt(p.prompt.fingerprint, p.prompt.name, p.prompt.version, p.prompt.canonical)
    dset = store.ensure_set(p.classes.name, p.prompt.fingerprint, p.backend, p.model, p.params, p.n)
    if dset.id != p.set_id:
        raise RuntimeError(f"the cache gave set {dset.id} for the planned set {p.set_id}")
    in_flight = set()
    for b in store.list_batches(uncollected=True):
        if b["kind"] != "api":
            continue
        in_flight |= {
            r["class_name"] for r in store.batch_requests(b["id"]).values() if r["set_id"] == p.set_id
        }
    return [name for name in p.to_send if name not in in_flight]


def _next_rounds(store: Store, p: Plan, names: list[str]) -> dict[str, int]:
    """A class with invalid answers stored is asked again with the next seed."""
    counts = store.invalid_counts(p.set_id)
    return {name: counts.get(name, 0) for name in names}


def _with_to_send(p: Plan, names: list[str]) -> Plan:
    return replace(p, to_send=names)


# ---------------------------------------------------------------------- the hosted API


def api_client(base_url: str | None = None, timeout: float = 60.0) -> Any:
    """An OpenAI client; the key only from the environment (a placeholder for a keyless server)."""
    import openai

    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        if base_url is None:
            raise BatchError(f"no API key: set the environment variable {API_KEY_ENV}, or give --base-url")
        key = "EMPTY"
    return openai.OpenAI(api_key=key, base_url=base_url, max_retries=3, timeout=timeout)


def _api(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run one API call; any failure becomes a BatchError with the secrets scrubbed."""
    import openai

    try:
        return call(*args, **kwargs)
    except openai.APIStatusError as exc:
        raise BatchError(scrub_secrets(f"{what}: HTTP {exc.status_code}: {exc.message}") or what) from None
    except openai.OpenAIError as exc:
        raise BatchError(scrub_secrets(f"{what}: {type(exc).__name__}: {exc}") or what) from None


def submit(
    p: Plan,
    client: Any,
    store: Store,
    max_requests: int = MAX_REQUESTS,
    max_bytes: int = MAX_BYTES,
) -> list[str]:
    """Upload and create the batches of every missing request; each is recorded before returning."""
    names = _prepare(store, p)
    lines = batch_lines(_with_to_send(p, names), _next_rounds(store, p, names))
    return [_submit_chunk(p, client, store, chunk) for chunk in split_lines(lines, max_requests, max_bytes)]


def _submit_chunk(p: Plan, client: Any, store: Store, chunk: list[BatchLine]) -> str:
    data = b"".join(line.line for line in chunk)
    upload = ("descgen-batch.jsonl", data, "application/jsonl")
    f = _api("uploading the batch file", client.files.create, file=upload, purpose="batch")
    b = _api(
        "creating the batch",
        client.batches.create,
        input_file_id=f.id,
        endpoint=ENDPOINT,
        completion_window=COMPLETION_WINDOW,
        metadata={"descgen_set": p.set_id[:64]},
    )
    row = {"id": b.id, "kind": "api", "backend": p.backend, "model": p.model}
    row |= {"input_file_id": f.id, "status": b.status or "validating", "requests": len(chunk)}
    store.add_batch(row, [line.record() for line in chunk])
    return str(b.id)


def write_batch_file(p: Plan, store: Store, path: str | Path) -> tuple[str, int]:
    """Write the batch file of every missing request (for vLLM ``run_batch``) and record it."""
    from descgen.fileio import write_text_atomic

    names = _prepare(store, p)
    lines = batch_lines(_with_to_send(p, names), _next_rounds(store, p, names))
    data = b"".join(line.line for line in lines)
    path = Path(path)
    write_text_atomic(path, data.decode("utf-8"))
    if not lines:
        return "", 0
    batch_id = "file:" + hashlib.sha256(data).hexdigest()[:24]
    row = {"id": batch_id, "kind": "file", "backend": p.backend, "model": p.model, "path": str(path)}
    store.add_batch(row | {"status": "written", "requests": len(lines)}, [line.record() for line in lines])
    return batch_id, len(lines)


def refresh(store: Store, client: Any, batch: dict) -> dict:
    """Read a batch's state from the API and record it; the updated row."""
    b = _api(f"reading batch {batch['id']}", client.batches.retrieve, batch["id"])
    counts = b.request_counts
    fields = {"status": b.status, "output_file_id": b.output_file_id, "error_file_id": b.error_file_id}
    if counts is not None:
        fields |= {"completed": counts.completed, "failed": counts.failed}
    if any(batch.get(k) != v for k, v in fields.items()):
        store.update_batch(batch["id"], **fields)
    return {**batch, **fields}


def cancel(store: Store, client: Any, batch_id: str) -> str:
    """Cancel a batch; its new state."""
    if store.get_batch(batch_id) is None:
        raise BatchError(f"no batch {batch_id!r} in {store.path}")
    b = _api(f"cancelling batch {batch_id}", client.batches.cancel, batch_id)
    store.update_batch(batch_id, status=b.status)
    return str(b.status)


def _download(client: Any, file_id: str | None) -> list[str]:
    if not file_id:
        return []
    content = _api(f"downloading file {file_id}", client.files.content, file_id)
    return content.text.splitlines()


# ---------------------------------------------------------------------- collecting


@dataclass
class CollectSummary:
    collected: list[str] = field(default_factory=list)  # batches finished and collected
    pending: list[str] = field(default_factory=list)  # batches still running
    stored: int = 0  # output lines stored by this run
    skipped: int = 0  # output lines stored before (an earlier collect)
    ok: int = 0
    invalid: int = 0
    errors: int = 0
    unknown: int = 0  # lines that match no recorded request (malformed, or another cache's)
    retried_ok: int = 0  # invalid batch answers completed by an online retry
    failed: int = 0  # classes of collected batches still incomplete

    @property
    def exit_code(self) -> int:
        return 0 if self.failed == 0 and not self.pending else 1

    def line(self) -> str:
        return (
            f"{len(self.collected)} batches collected, {len(self.pending)} pending | "
            f"{self.stored} lines stored ({self.ok} ok, {self.invalid} invalid, {self.errors} errors), "
            f"{self.skipped} already stored, {self.unknown} unmatched | "
            f"{self.retried_ok} completed online | {self.failed} classes incomplete"
        )


def _line_response(name: str, obj: dict) -> Response:
    """One output line as a Response (``error`` set for a failed request)."""
    from descgen.backends.openai_backend import completion_response

    err = obj.get("error")
    resp = obj.get("response") or {}
    if err:
        detail = err.get("message", err) if isinstance(err, dict) else err
        code = err.get("code") if isinstance(err, dict) else None
        return Response(key=name, error=f"batch error{f' {code}' if code else ''}: {detail}")
    status = resp.get("status_code")
    body = resp.get("body")
    if status != 200:
        msg = body.get("error", {}).get("message") if isinstance(body, dict) else None
        return Response(key=name, error=f"HTTP {status}: {msg or body}")
    try:
        return completion_response(name, body)
    except ValueError as exc:
        return Response(key=name, error=str(exc))


class _Ingest:
    """Stores the lines of one batch, each as the online path stores one answer."""

    def __init__(self, store: Store, batch: dict, summary: CollectSummary, max_invalid: int):
        self.store, self.batch, self.summary, self.max_invalid = store, batch, summary, max_invalid
        self.requests = store.batch_requests(batch["id"])
        self.stored = store.stored_batch_lines(batch["id"])
        self.recorders: dict[tuple[str, int], Any] = {}

    def _recorder(self, set_id: str, round_: int) -> Any:
        from descgen.generate import Recorder

        key = (set_id, round_)
        if key not in self.recorders:
            reqs = [r for r in self.requests.values() if r["set_id"] == set_id and r["round"] == round_]
            p, known, dset = _set_plan(self.store, set_id, reqs, self.max_invalid + round_)
            rows = {r["class_name"]: json.loads(r["request"]) for r in reqs}
            self.recorders[key] = Recorder(p, self.store, dset, known, round_, rows)
        return self.recorders[key]

    def line(self, raw: str) -> None:
        try:
            obj = json.loads(raw)
            req = self.requests.get(obj.get("custom_id")) if isinstance(obj, dict) else None
        except (ValueError, TypeError):
            req = None
        if req is None:
            self.summary.unknown += 1 if raw.strip() else 0
            return
        self._store(req, _line_response(req["class_name"], obj), raw)

    def missing(self, reason: str) -> None:
        """Record every request of the batch that has no line as an error."""
        for cid, req in self.requests.items():
            if cid not in self.stored:
                self._store(req, Response(key=req["class_name"], error=reason, attempts=0), None)

    def _store(self, req: dict, resp: Response, raw: str | None) -> None:
        cid = req["custom_id"]
        if cid in self.stored:
            self.summary.skipped += 1
            return
        rec = self._recorder(req["set_id"], req["round"])
        status = rec.record(resp, {"batch_id": self.batch["id"], "custom_id": cid, "batch_line": raw})
        self.summary.ok += status == "ok"
        self.summary.invalid += status == "invalid"
        self.summary.errors += status == "error"
        self.summary.stored += 1
        self.stored[cid] = status


def _set_plan(
    store: Store, set_id: str, reqs: list[dict], max_invalid: int
) -> tuple[Plan, dict[str, tuple[int, list]], Any]:
    """A plan over the requests of one set, rebuilt from the cache alone."""
    from descgen.prompts import prompt_from_content

    dset = store.get_set(set_id)
    prompt_row = store.get_prompt(dset.prompt_fp) if dset is not None else None
    if dset is None or prompt_row is None:
        raise BatchError(f"the cache {store.path} has no set {set_id} for a recorded batch")
    names = [r["class_name"] for r in reqs]
    known = {r["class_name"]: (r["class_id"], json.loads(r["request"])["messages"]) for r in reqs}
    p = Plan(
        classes=ClassList(dset.dataset, names, "", "batch"),
        prompt=prompt_from_content(prompt_row["content"]),
        backend=dset.backend,
        model=dset.model,
        params=dset.params,
        n=dset.n,
        cache=store.path,
        set_id=set_id,
        complete=[],
        to_send=names,
        max_invalid=max_invalid,
        cache_exists=True,
    )
    return p, known, dset


def _retry_online(
    store: Store, batch: dict, max_invalid: int, options: dict | None, s: CollectSummary
) -> None:
    """Ask again online for the classes whose batch answer was invalid (a new seed per round)."""
    from descgen.generate import execute, open_backend

    requests = store.batch_requests(batch["id"])
    statuses = store.stored_batch_lines(batch["id"])
    groups: dict[tuple[str, int], list[dict]] = {}
    for cid, req in requests.items():
        if statuses.get(cid) == "invalid":
            groups.setdefault((req["set_id"], req["round"]), []).append(req)
    for (set_id, round_), reqs in groups.items():
        done = store.completed_classes(set_id)
        reqs = [r for r in reqs if r["class_name"] not in done]
        if not reqs:
            continue
        p, known, _ = _set_plan(store, set_id, reqs, round_ + max_invalid)
        backend = open_backend(replace(p, backend="openai"), options)  # a batch file's server, too
        s.retried_ok += execute(p, backend, store, start_round=round_ + 1, known=known).done


def _finish(store: Store, batch: dict, max_invalid: int, options: dict | None, s: CollectSummary) -> None:
    """Online retries (when allowed), the count of incomplete classes, and the batch marked collected."""
    if max_invalid > 0 and options is not None:
        _retry_online(store, batch, max_invalid, options, s)
    for req in store.batch_requests(batch["id"]).values():
        if req["class_name"] not in store.completed_classes(req["set_id"]):
            s.failed += 1
    store.update_batch(batch["id"], collected_at=time.time())
    s.collected.append(batch["id"])


def collect_batch(
    store: Store,
    batch: dict,
    lines: Iterable[str],
    max_invalid: int,
    options: dict | None,
    summary: CollectSummary,
    missing_reason: str,
) -> None:
    """Store the output lines of one batch, the requests without a line as errors, then finish it."""
    ingest = _Ingest(store, batch, summary, max_invalid)
    for raw in lines:
        ingest.line(raw)
    ingest.missing(missing_reason)
    _finish(store, batch, max_invalid, options, summary)


def collect(
    store: Store,
    client: Any,
    max_invalid: int = 2,
    options: dict | None = None,
    batch_ids: list[str] | None = None,
) -> CollectSummary:
    """Collect every finished, uncollected API batch (or those of ``batch_ids``)."""
    summary = CollectSummary()
    for batch in store.list_batches(uncollected=True):
        if batch["kind"] != "api" or (batch_ids and batch["id"] not in batch_ids):
            continue
        batch = refresh(store, client, batch)
        if batch["status"] not in FINAL_STATES:
            summary.pending.append(batch["id"])
            continue
        lines = _download(client, batch["output_file_id"]) + _download(client, batch["error_file_id"])
        reason = f"no result in the output of batch {batch['id']} (status {batch['status']})"
        collect_batch(store, batch, lines, max_invalid, options, summary, reason)
    return summary


def collect_wait(
    store: Store,
    client: Any,
    max_invalid: int = 2,
    options: dict | None = None,
    batch_ids: list[str] | None = None,
    *,
    poll_s: float = 5.0,
    max_poll_s: float = 300.0,
    out: TextIO | None = None,
) -> CollectSummary:
    """Collect (as :func:`collect`), polling with exponential backoff until no batch is pending."""
    total = CollectSummary()
    delay = poll_s
    while True:
        s = collect(store, client, max_invalid, options, batch_ids)
        _merge(total, s)
        total.pending = s.pending
        if not s.pending:
            return total
        if out is not None:
            print(f"{len(s.pending)} batches pending; next check in {delay:.0f} s", file=out, flush=True)
        time.sleep(delay)
        delay = min(max_poll_s, delay * 2)


def _merge(total: CollectSummary, s: CollectSummary) -> None:
    for name in ("stored", "skipped", "ok", "invalid", "errors", "unknown", "retried_ok", "failed"):
        setattr(total, name, getattr(total, name) + getattr(s, name))
    total.collected += s.collected


def collect_file(
    store: Store, path: str | Path, max_invalid: int = 2, options: dict | None = None
) -> CollectSummary:
    """Ingest a vLLM ``run_batch`` output file; its lines are matched to recorded requests by custom id."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise BatchError(f"cannot read {path}: {exc.strerror or exc}") from None
    by_batch: dict[str, list[str]] = {}
    summary = CollectSummary()
    for raw in lines:
        try:
            cid = json.loads(raw).get("custom_id")
        except (ValueError, AttributeError):
            cid = None
        batches = store.batches_of_request(cid) if isinstance(cid, str) else []
        if not batches:
            summary.unknown += 1 if raw.strip() else 0
            continue
        by_batch.setdefault(batches[0], []).append(raw)
    if not by_batch and lines:
        raise BatchError(f"no line of {path} matches a request recorded in {store.path}")
    for batch_id, batch_lines_ in by_batch.items():
        batch = store.get_batch(batch_id)
        reason = f"no result in {path} for this request"
        collect_batch(store, batch, batch_lines_, max_invalid, options, summary, reason)
    return summary


def open_cache(cache: str | Path, create: bool) -> Store:
    """The cache for batch bookkeeping (created only when submitting)."""
    try:
        return Store(Path(cache), create=create)
    except StoreError as exc:
        raise BatchError(str(exc)) from None


# ---------------------------------------------------------------------- the command-level flows


def generate_batch(
    p: Plan, options: dict[str, Any], wait: bool = False, poll_s: float = 5.0, out: TextIO | None = None
) -> tuple[list[str], CollectSummary | None]:
    """``generate --batch [--wait]``: submit the missing requests, and with ``wait`` collect them."""
    if p.backend != "openai":
        raise BatchError(
            f"--batch sends to the OpenAI Batch API (--backend openai); for {p.backend} write a batch "
            "file with --batch-file"
        )
    client = api_client(options.get("base_url"), float(options.get("timeout") or 60.0))
    with open_cache(p.cache, create=True) as store:
        ids = submit(p, client, store)
        if not wait:
            return ids, None
        return ids, collect_wait(store, client, p.max_invalid, options, ids or None, poll_s=poll_s, out=out)


def generate_batch_file(p: Plan, path: str | Path) -> tuple[str, int]:
    """``generate --batch-file IN.jsonl``: write (and record) the batch file of the missing requests."""
    with open_cache(p.cache, create=True) as store:
        return write_batch_file(p, store, path)


def batch_status(cache: str | Path, options: dict[str, Any] | None) -> tuple[list[dict], str | None]:
    """Every recorded batch, refreshed from the API when it is reachable; and why not, when not."""
    if not Path(cache).exists():
        raise BatchError(f"no cache at {cache}")
    with open_cache(cache, create=False) as store:
        batches = store.list_batches()
        live = [b for b in batches if b["kind"] == "api" and not b["collected_at"]]
        if not live or options is None:
            return batches, None
        try:
            client = api_client(options.get("base_url"), float(options.get("timeout") or 30.0))
            fresh = {b["id"]: refresh(store, client, b) for b in live}
        except BatchError as exc:
            return batches, str(exc)
        return [fresh.get(b["id"], b) for b in batches], None


# ---------------------------------------------------------------------- estimates


MESSAGE_OVERHEAD_TOKENS = 4
JSON_OVERHEAD_TOKENS = 4  # per phrase: quotes, comma and spacing


def estimate(p: Plan, pricing_path: str | Path | None = None) -> dict[str, Any]:
    """Tokens and cost of the plan's requests before anything is sent (one attempt each).

    Prompt tokens: the characters of the rendered messages and of the response schema, counted by
    :func:`descgen.backends.ratelimit.text_tokens` (the estimate the online requests are paced by),
    plus a few tokens per message. Completion tokens: at most 2*N phrases of the prompt's maximum
    length with their JSON punctuation, and never more than max_tokens.
    """
    from descgen.generate import plan_messages

    schema_chars = len(json.dumps(p.prompt.schema(p.n)))
    prompt_tokens = 0
    for msgs in plan_messages(p).values():
        chars = sum(len(m.get("content", "")) for m in msgs) + schema_chars
        prompt_tokens += text_tokens(chars) + MESSAGE_OVERHEAD_TOKENS * len(msgs)
    per_answer = 2 * p.n * (text_tokens(p.prompt.max_chars) + JSON_OVERHEAD_TOKENS) + 8
    completion_tokens = len(p.to_send) * min(int(p.params["max_tokens"]), per_answer)
    table = load_price_table(pricing_path)
    tokens = (prompt_tokens, completion_tokens)
    costs = table.costs(p.backend, p.model, tokens, batch_tokens=tokens)  # sent online or all as a batch

    def usd(x: float | None) -> float | None:
        return None if x is None else round(x, 6)

    return {
        "requests": len(p.to_send),
        "prompt_tokens": prompt_tokens,
        "completion_tokens_max": completion_tokens,
        "cost_usd": usd(costs["online_cost_usd"]),
        "batch_cost_usd": usd(costs["batch_cost_usd"]),
        "batch_discount": table.batch_discount,
    }


def estimate_lines(e: dict[str, Any]) -> list[str]:
    """An estimate as the lines ``--dry-run`` prints."""

    def usd(x: float | None) -> str:
        return "?" if x is None else f"${x:.4f}"

    return [
        f"estimate  {e['prompt_tokens']} prompt + up to {e['completion_tokens_max']} completion tokens "
        f"(about {CHARS_PER_TOKEN} characters per token)",
        f"cost      online {usd(e['cost_usd'])}, batch {usd(e['batch_cost_usd'])} "
        f"(batch price x{e['batch_discount']:g}; one attempt per request, retries not included)",
    ]
