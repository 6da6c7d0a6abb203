"""Execute a plan (descgen.plan): call the backend, validate each answer, store it.

Every class's result is written in its own transaction as soon as it arrives, so a killed run
loses at most the requests in flight, and running the same command again requests only what is
missing. Bad input (class list, prompt, options, backend configuration) is detected before the
cache file is opened for writing: nothing is written then.
"""

from __future__ import annotations

import inspect
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from descgen.backends import (
    Backend,
    BackendError,
    Request,
    Response,
    create_backend,
    option_names,
    scrub_secrets,
)
from descgen.plan import GenerateInputError, Plan, plan
from descgen.store import Store, StoreError

__all__ = [
    "GenerateInputError",
    "Recorder",
    "Summary",
    "execute",
    "generate",
    "make_request",
    "open_backend",
    "open_store",
    "plan_messages",
    "request_row",
    "run_plan",
]

MAX_LISTED_FAILURES = 20
# The keyword arguments of generate() that go to plan(); the others are backend options.
PLAN_ARGS = frozenset(inspect.signature(plan).parameters)


@dataclass
class Summary:
    dataset: str
    set_id: str
    prompt: str
    prompt_fp: str
    backend: str
    model: str
    cache: str
    classes: int = 0
    done: int = 0  # completed by this run
    cached: int = 0  # complete before this run and not requested
    failed: int = 0  # still incomplete (or, with --force, not refreshed)
    invalid: int = 0  # invalid answers received (each retried up to --max-invalid times)
    errors: int = 0  # requests that failed after all transport retries
    requests: int = 0  # requests sent, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    dry_run: bool = False
    to_request: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # class name -> last reason

    @classmethod
    def of(cls, p: Plan, dry_run: bool = False) -> Summary:
        """The summary of a plan before anything is sent."""
        return cls(
            dataset=p.classes.name,
            set_id=p.set_id,
            prompt=p.prompt.label,
            prompt_fp=p.prompt.fingerprint,
            backend=p.backend,
            model=p.model,
            cache=str(p.cache),
            classes=len(p.classes.names),
            cached=p.cached,
            dry_run=dry_run,
            to_request=list(p.to_send),
        )

    @property
    def complete(self) -> bool:
        return self.failed == 0

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else 1

    def line(self) -> str:
        if self.dry_run:
            return (
                f"{self.dataset}: {self.classes} classes, {self.cached} cached, "
                f"{len(self.to_request)} to request (dry run, nothing written)"
            )
        return (
            f"{self.dataset}: {self.classes} classes | {self.done} done, {self.cached} cached, "
            f"{self.failed} failed ({self.errors} errors, {self.invalid} invalid answers) | "
            f"{self.requests} requests, {self.prompt_tokens} prompt + {self.completion_tokens} completion tokens"
            f" | {self.wall_s:.1f} s | set {self.set_id}"
        )

    def failure_lines(self) -> list[str]:
        """The incomplete classes and why (the first few), for the user."""
        if not self.failures:
            return []
        items = list(self.failures.items())
        lines = [f"{len(items)} classes incomplete:"]
        lines += [f"  {name}: {reason}" for name, reason in items[:MAX_LISTED_FAILURES]]
        if len(items) > MAX_LISTED_FAILURES:
            lines.append(f"  ... and {len(items) - MAX_LISTED_FAILURES} more (see `descgen audit`)")
        return lines


# ---------------------------------------------------------------------- opening the pieces


def open_backend(p: Plan, options: dict[str, Any] | None = None) -> Backend:
    """The plan's backend, built from the generation options that apply to it."""
    try:
        return create_backend(p.backend, p.model, options)
    except BackendError as exc:
        raise GenerateInputError(scrub_secrets(str(exc)) or "backend error") from None


def open_store(cache: str | Path) -> Store:
    """The cache, opened for writing (created when missing)."""
    path = Path(cache)
    try:
        return Store(path, create=True)
    except StoreError as exc:
        raise GenerateInputError(str(exc)) from None
    except OSError as exc:
        raise GenerateInputError(f"cannot create the cache {path}: {exc.strerror or exc}") from None


def run_plan(
    p: Plan, options: dict[str, Any] | None = None, progress: bool = False, out: TextIO | None = None
) -> Summary:
    """Send what the plan lists (nothing is opened when it lists nothing) and report failures to ``out``."""
    t0 = time.perf_counter()
    if not p.to_send:
        summary = Summary.of(p)
    else:
        backend = open_backend(p, options)
        with open_store(p.cache) as store:
            summary = execute(p, backend, store, progress=progress)
    summary.wall_s = time.perf_counter() - t0
    if out is not None:
        for line in summary.failure_lines():
            print(line, file=out, flush=True)
    return summary


def generate(
    *, dry_run: bool = False, progress: bool = False, out: TextIO | None = None, **options: Any
) -> Summary:
    """Plan, then (unless ``dry_run``) run the plan: the whole of ``descgen generate`` as a function.

    ``options`` are the keyword arguments of :func:`descgen.plan.plan` (``dataset``,
    ``classes_file``, ``cache``, ``backend``, ``model``, ...) and the generation options of the
    backends (``base_url``, ``concurrency``, ``timeout``, ``max_attempts`` for openai;
    ``vllm_options`` for vllm); each backend takes those that apply to it. ``out`` receives the
    plan of a dry run and the list of failed classes.
    """
    unknown = sorted(set(options) - PLAN_ARGS - option_names())
    if unknown:
        raise TypeError(f"generate() got unknown options: {', '.join(unknown)}")
    t0 = time.perf_counter()
    p = plan(**{k: v for k, v in options.items() if k in PLAN_ARGS})
    if dry_run:
        if out is not None:
            print("\n".join(p.text_lines()), file=out, flush=True)
        summary = Summary.of(p, dry_run=True)
        summary.wall_s = time.perf_counter() - t0
        return summary
    backend_options = {k: v for k, v in options.items() if k not in PLAN_ARGS}
    return run_plan(p, backend_options, progress=progress, out=out)


# ---------------------------------------------------------------------- execution


def execute(
    p: Plan,
    backend: Backend,
    store: Store,
    progress: bool = False,
    start_round: int = 0,
    known: dict[str, tuple[int, list[dict[str, str]]]] | None = None,
) -> Summary:
    """Request every class of ``p.to_send`` from ``backend``, validate and store each answer.

    An invalid answer is requested again with the next seed, up to ``p.max_invalid`` times.
    ``start_round`` > 0 continues after rounds sent elsewhere (a batch); ``known`` gives, per class,
    its class id and messages as already sent (then ``p.classes`` need not hold every class).
    """
    t0 = time.perf_counter()
    summary = Summary.of(p)
    store.ensure_prompt(p.prompt.fingerprint, p.prompt.name, p.prompt.version, p.prompt.canonical)
    dset = store.ensure_set(p.classes.name, p.prompt.fingerprint, p.backend, p.model, p.params, p.n)
    if dset.id != p.set_id:
        raise RuntimeError(f"the cache gave set {dset.id} for the planned set {p.set_id}")
    run = _Execution(p, store, dset, summary, _Progress(len(p.to_send)) if progress else None, known)
    try:
        pending = list(p.to_send)
        for round_ in range(start_round, p.max_invalid + 1):
            if not pending:
                break
            pending = run.round(backend, pending, round_)
    finally:
        run.close()
    summary.wall_s = time.perf_counter() - t0
    return summary


@dataclass
class _Round:
    """The state of one pass over the pending classes (one seed)."""

    number: int
    last: bool
    rows: dict[str, dict[str, Any]]  # class name -> the request as stored
    retry: list[str] = field(default_factory=list)
    reported: set[str] = field(default_factory=set)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # class name -> extra columns


class _Execution:
    """Sends rounds of requests and records each response as it arrives."""

    def __init__(
        self,
        p: Plan,
        store: Store,
        dset: Any,
        summary: Summary,
        bar: _Progress | None,
        known: dict[str, tuple[int, list[dict[str, str]]]] | None = None,
    ):
        from descgen.validate import Limits  # pydantic: only when needed

        self.plan, self.store, self.dset, self.summary, self.bar = p, store, dset, summary, bar
        self.limits = Limits(n=p.n, min_chars=p.prompt.min_chars, max_chars=p.prompt.max_chars)
        self.schema = p.prompt.schema(p.n)
        if known is not None:
            self.index = {name: cid for name, (cid, _) in known.items()}
            self.messages = {name: msgs for name, (_, msgs) in known.items()}
        else:
            self.index = {name: i for i, name in enumerate(p.classes.names)}
            self.messages = plan_messages(p)

    def request(self, name: str, round_: int) -> Request:
        return make_request(self.plan, name, self.messages[name], self.schema, round_)

    def round(self, backend: Backend, pending: list[str], number: int) -> list[str]:
        """Send one request per pending class; return the classes to request again."""
        requests = [self.request(name, number) for name in pending]
        rnd = _Round(number, number == self.plan.max_invalid, {r.key: _request_row(r) for r in requests})
        backend.run(requests, partial(self.on_done, rnd))
        for name in pending:  # a class the backend did not report at all counts as failed
            if name not in rnd.reported:
                self._fail(name, "the backend returned no response")
        return rnd.retry

    def on_done(self, rnd: _Round, resp: Response) -> None:
        name = resp.key
        if name not in rnd.rows or name in rnd.reported:  # not ours, or reported twice: ignore
            return
        rnd.reported.add(name)
        s = self.summary
        s.requests += resp.attempts
        s.prompt_tokens += resp.prompt_tokens or 0
        s.completion_tokens += resp.completion_tokens or 0
        common = {
            "class_id": self.index[name],
            "attempt": rnd.number + 1,
            "seed": self.plan.params["seed"] + rnd.number,
            "request": rnd.rows[name],
            "raw_response": scrub_secrets(resp.text, patterns=False),
            "prompt_tokens": resp.prompt_tokens,
            "completion_tokens": resp.completion_tokens,
            "latency_s": resp.latency_s,
            **rnd.provenance.get(name, {}),
        }
        if resp.error is not None:
            reason = scrub_secrets(resp.error) or "error"
            self.store.record_attempt(self.dset, name, status="error", error=reason, **common)
            s.errors += 1
            self._fail(name, reason)
            return
        self._answer(rnd, name, resp.text, common)

    def _answer(self, rnd: _Round, name: str, text: str | None, common: dict[str, Any]) -> None:
        from descgen.validate import InvalidAnswer, validate_answer

        try:
            answer = validate_answer(text, self.limits)
        except InvalidAnswer as exc:
            self.store.record_attempt(self.dset, name, status="invalid", error=str(exc), **common)
            self.summary.invalid += 1
            if rnd.last:
                self._fail(name, f"invalid answer: {exc}")
            else:
                rnd.retry.append(name)
            return
        prm = self.plan.prompt
        self.store.record_success(
            self.dset,
            name,
            [prm.sentence("spatial", phrase, name) for phrase in answer.spatial],
            [prm.sentence("temporal", phrase, name) for phrase in answer.temporal],
            phrases={"spatial": answer.spatial, "temporal": answer.temporal},
            replace=self.plan.force,
            **common,
        )
        self.summary.done += 1
        self.summary.failures.pop(name, None)
        if self.bar:
            self.bar.advance(ok=True)

    def _fail(self, name: str, reason: str) -> None:
        self.summary.failed += 1
        self.summary.failures[name] = reason
        if self.bar:
            self.bar.advance(ok=False)

    def close(self) -> None:
        if self.bar:
            self.bar.close()


class Recorder:
    """Validates and stores answers that arrive from elsewhere (a batch output): one round of one set."""

    def __init__(
        self,
        p: Plan,
        store: Store,
        dset: Any,
        known: dict[str, tuple[int, list[dict[str, str]]]],
        round_: int,
        rows: dict[str, dict[str, Any]],
    ):
        self.summary = Summary.of(p)
        self._run = _Execution(p, store, dset, self.summary, None, known)
        self._round = _Round(round_, round_ >= p.max_invalid, rows)

    def record(self, resp: Response, provenance: dict[str, Any]) -> str:
        """Store one answer like the online path; its status ("ok", "invalid" or "error")."""
        before = (self.summary.done, self.summary.invalid)
        self._round.provenance[resp.key] = provenance
        self._round.reported.discard(resp.key)
        self._run.on_done(self._round, resp)
        if self.summary.done > before[0]:
            return "ok"
        return "invalid" if self.summary.invalid > before[1] else "error"


def plan_messages(p: Plan) -> dict[str, list[dict[str, str]]]:
    """The rendered messages of every class the plan sends."""
    c = p.classes
    return {name: p.prompt.messages(c.name, c.description, name, p.n) for name in p.to_send}


def make_request(
    p: Plan, name: str, messages: list[dict[str, str]], schema: dict[str, Any], round_: int
) -> Request:
    """The request of one class in one round (a new seed for each retry of an invalid answer)."""
    params = p.params
    return Request(
        key=name,
        messages=messages,
        schema=schema,
        schema_name=p.prompt.schema_name,
        temperature=params["temperature"],
        max_tokens=params["max_tokens"],
        seed=params["seed"] + round_,
        top_p=params["top_p"],
    )


def request_row(r: Request) -> dict[str, Any]:
    """A request as the cache stores it."""
    return _request_row(r)


def _request_row(r: Request) -> dict[str, Any]:
    return {
        "messages": r.messages,
        "schema_name": r.schema_name,
        "schema": r.schema,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "max_tokens": r.max_tokens,
        "seed": r.seed,
    }


class _Progress:
    """A rich progress bar on stderr."""

    def __init__(self, total: int):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(
            TextColumn("generating"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=Console(file=sys.stderr),
            transient=False,
        )
        self.failed = 0
        self.task = self.p.add_task("generate", total=total, failed=0)
        self.p.start()

    def advance(self, ok: bool) -> None:
        if not ok:
            self.failed += 1
        self.p.update(self.task, advance=1, failed=self.failed)

    def close(self) -> None:
        self.p.stop()
