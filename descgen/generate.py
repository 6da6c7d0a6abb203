"""plan -> skip what is cached -> call the backend -> validate -> store.

Every class's result is written in its own transaction as soon as it arrives, so a killed run
loses at most the requests in flight, and running the same command again requests only what is
missing. Bad input (class list, prompt, options, backend configuration) is detected before the
cache file is opened for writing: nothing is written then.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from descgen.backends import BACKENDS, Backend, BackendError, Request, Response, get_backend, scrub_secrets
from descgen.datasets import ClassList, ClassListError, load_class_list
from descgen.prompts import Prompt, PromptError, load_prompt
from descgen.store import Store, StoreError, set_id_for

DEFAULT_CACHE = "cache/descriptions.db"
DEFAULT_N = 2
MAX_N = 64


class GenerateInputError(Exception):
    """Bad input detected before anything was written. The message is meant for the user."""


@dataclass
class GenerateSummary:
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


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> dict; values are read as JSON when they parse (numbers, booleans)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise GenerateInputError(f"bad option {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def sampling_params(
    prompt: Prompt, temperature: float | None, seed: int | None, max_tokens: int | None
) -> dict[str, Any]:
    params = prompt.sampling
    if temperature is not None:
        params["temperature"] = temperature
    if seed is not None:
        params["seed"] = seed
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    if not 0.0 <= float(params["temperature"]) <= 2.0:
        raise GenerateInputError(f"--temperature must be between 0 and 2, got {params['temperature']}")
    if int(params["max_tokens"]) < 16:
        raise GenerateInputError(f"--max-tokens must be at least 16, got {params['max_tokens']}")
    params["temperature"] = float(params["temperature"])
    params["top_p"] = float(params["top_p"])
    params["max_tokens"] = int(params["max_tokens"])
    params["seed"] = int(params["seed"])
    return params


def _print(out: TextIO | None, text: str) -> None:
    if out is not None:
        print(text, file=out, flush=True)


def generate(
    dataset: str | None = None,
    classes_file: str | Path | None = None,
    data_dir: str | Path | None = None,
    cache: str | Path = DEFAULT_CACHE,
    prompt: str | Path | None = None,
    n: int = DEFAULT_N,
    backend: str = "openai",
    model: str | None = None,
    base_url: str | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    concurrency: int = 8,
    timeout: float = 60.0,
    max_attempts: int = 5,
    max_invalid: int = 2,
    force: bool = False,
    dry_run: bool = False,
    vllm_options: dict[str, Any] | None = None,
    backend_obj: Backend | None = None,
    progress: bool = False,
    out: TextIO | None = None,
) -> GenerateSummary:
    """Generate (or complete) a description set and return what happened.

    Raises GenerateInputError for bad input, before anything is written. ``backend_obj`` replaces
    the named backend (it must have ``name``, ``model`` and ``run``). ``out`` receives the plan of a
    dry run and the list of failed classes; ``progress`` shows a progress bar on stderr.
    """
    t0 = time.perf_counter()
    # ---------------------------------------------------------------- check the input
    try:
        classes: ClassList = load_class_list(dataset, classes_file, data_dir)
        prm = load_prompt(prompt)
    except (ClassListError, PromptError) as exc:
        raise GenerateInputError(str(exc)) from None
    if not 1 <= n <= MAX_N:
        raise GenerateInputError(f"--n must be between 1 and {MAX_N}, got {n}")
    if max_invalid < 0:
        raise GenerateInputError(f"--max-invalid must be 0 or more, got {max_invalid}")
    if backend_obj is None and backend not in BACKENDS:
        raise GenerateInputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend_obj is None and backend == "vllm" and not model:
        raise GenerateInputError("--backend vllm needs --model (a Hugging Face name or a local path)")
    params = sampling_params(prm, temperature, seed, max_tokens)
    backend_name = backend_obj.name if backend_obj is not None else backend
    if backend_obj is not None:
        model_name = backend_obj.model
    elif backend == "openai":
        from descgen.backends.openai_backend import DEFAULT_MODEL

        model_name = model or DEFAULT_MODEL
    else:
        model_name = str(model)
    set_id = set_id_for(classes.name, prm.fingerprint, backend_name, model_name, params, n)
    summary = GenerateSummary(
        dataset=classes.name,
        set_id=set_id,
        prompt=prm.label,
        prompt_fp=prm.fingerprint,
        backend=backend_name,
        model=model_name,
        cache=str(cache),
        classes=len(classes.names),
        dry_run=dry_run,
    )
    cache_path = Path(cache)
    if cache_path.exists() and cache_path.is_dir():
        raise GenerateInputError(f"--cache {cache_path} is a directory, not a file")

    # ---------------------------------------------------------------- what is already there
    store: Store | None = None
    try:
        if cache_path.exists():
            try:
                store = Store(cache_path, create=False)
            except StoreError as exc:
                raise GenerateInputError(str(exc)) from None
            completed = store.completed_classes(set_id)
        else:
            completed = set()
        cached = [c for c in classes.names if c in completed]
        todo = list(classes.names) if force else [c for c in classes.names if c not in completed]
        summary.cached = 0 if force else len(cached)
        summary.to_request = todo

        if dry_run:
            _print_plan(out, summary, classes, prm, params, n, cache_path)
            summary.wall_s = time.perf_counter() - t0
            return summary
        if not todo:
            summary.wall_s = time.perf_counter() - t0
            return summary

        # ------------------------------------------------------------ backend, then the store
        if backend_obj is None:
            try:
                if backend == "openai":
                    be = get_backend(
                        "openai",
                        model=model_name,
                        base_url=base_url,
                        concurrency=concurrency,
                        timeout=timeout,
                        max_attempts=max_attempts,
                    )
                else:
                    be = get_backend("vllm", model=model_name, **(vllm_options or {}))
            except BackendError as exc:
                raise GenerateInputError(scrub_secrets(str(exc)) or "backend error") from None
        else:
            be = backend_obj
        try:
            if store is None:
                store = Store(cache_path, create=True)
            else:
                store.make_writable()  # opened read-only above to see what is cached
        except StoreError as exc:
            raise GenerateInputError(str(exc)) from None
        except OSError as exc:
            raise GenerateInputError(f"cannot create the cache {cache_path}: {exc.strerror or exc}") from None
        store.ensure_prompt(prm.fingerprint, prm.name, prm.version, prm.canonical)
        dset = store.ensure_set(classes.name, prm.fingerprint, backend_name, model_name, params, n)
        assert dset.id == set_id
        _run(store, dset, be, classes, prm, params, n, todo, max_invalid, force, summary, progress)
    finally:
        if store is not None:
            store.close()
    summary.wall_s = time.perf_counter() - t0
    if summary.failures and out is not None:
        _print(out, f"{len(summary.failures)} classes incomplete:")
        for name, reason in list(summary.failures.items())[:20]:
            _print(out, f"  {name}: {reason}")
        if len(summary.failures) > 20:
            _print(out, f"  ... and {len(summary.failures) - 20} more (see `descgen audit`)")
    return summary


def _print_plan(
    out: TextIO | None,
    s: GenerateSummary,
    classes: ClassList,
    prm: Prompt,
    params: dict[str, Any],
    n: int,
    cache_path: Path,
) -> None:
    _print(out, f"dataset   {classes.name} ({len(classes.names)} classes from {classes.source})")
    _print(out, f"prompt    {prm.label} ({prm.fingerprint[:16]})")
    _print(out, f"backend   {s.backend}, model {s.model}")
    _print(out, f"params    {json.dumps(params, sort_keys=True)}, N={n}")
    exists = "" if cache_path.exists() else " (does not exist yet)"
    _print(out, f"cache     {cache_path}{exists}, set {s.set_id}")
    _print(out, f"cached    {s.cached} classes")
    _print(out, f"to send   {len(s.to_request)} requests (more if answers are invalid or requests fail)")
    for name in s.to_request:
        _print(out, f"  {name}")


def _run(
    store: Store,
    dset: Any,
    be: Backend,
    classes: ClassList,
    prm: Prompt,
    params: dict[str, Any],
    n: int,
    todo: list[str],
    max_invalid: int,
    force: bool,
    summary: GenerateSummary,
    progress: bool,
) -> None:
    from descgen.validate import InvalidAnswer, Limits, validate_answer  # pydantic: only when needed

    limits = Limits(n=n, min_chars=prm.min_chars, max_chars=prm.max_chars)
    schema = prm.schema(n)
    index = {name: i for i, name in enumerate(classes.names)}
    messages = {
        name: prm.messages(classes.name, classes.description, name, n) for name in todo
    }  # rendered once per class

    def make_request(name: str, round_: int) -> Request:
        return Request(
            key=name,
            messages=messages[name],
            schema=schema,
            schema_name=prm.schema_name,
            temperature=params["temperature"],
            max_tokens=params["max_tokens"],
            seed=params["seed"] + round_,  # a new seed for each retry of an invalid answer
            top_p=params["top_p"],
        )

    bar = _Progress(len(todo)) if progress else None
    pending = list(todo)
    try:
        for round_ in range(max_invalid + 1):
            if not pending:
                break
            retry: list[str] = []
            reported: set[str] = set()
            requests = [make_request(name, round_) for name in pending]
            request_rows = {r.key: _request_row(r) for r in requests}
            last_round = round_ == max_invalid

            def on_done(
                resp: Response,
                round_: int = round_,
                last_round: bool = last_round,
                retry: list[str] = retry,
                reported: set[str] = reported,
                request_rows: dict[str, dict[str, Any]] = request_rows,
            ) -> None:
                name = resp.key
                row = request_rows.get(name)
                if row is None or name in reported:  # not ours, or reported twice: ignore
                    return
                reported.add(name)
                summary.requests += resp.attempts
                summary.prompt_tokens += resp.prompt_tokens or 0
                summary.completion_tokens += resp.completion_tokens or 0
                common = {
                    "class_id": index[name],
                    "attempt": round_ + 1,
                    "seed": params["seed"] + round_,
                    "request": row,
                    "raw_response": scrub_secrets(resp.text, patterns=False),
                    "prompt_tokens": resp.prompt_tokens,
                    "completion_tokens": resp.completion_tokens,
                    "latency_s": resp.latency_s,
                }
                if resp.error is not None:
                    reason = scrub_secrets(resp.error) or "error"
                    store.record_attempt(dset, name, status="error", error=reason, **common)
                    summary.errors += 1
                    summary.failed += 1
                    summary.failures[name] = reason
                    if bar:
                        bar.advance(ok=False)
                    return
                try:
                    answer = validate_answer(resp.text, limits)
                except InvalidAnswer as exc:
                    reason = str(exc)
                    store.record_attempt(dset, name, status="invalid", error=reason, **common)
                    summary.invalid += 1
                    if last_round:
                        summary.failed += 1
                        summary.failures[name] = f"invalid answer: {reason}"
                        if bar:
                            bar.advance(ok=False)
                    else:
                        retry.append(name)
                    return
                spatial = [prm.sentence("spatial", p, name) for p in answer.spatial]
                temporal = [prm.sentence("temporal", p, name) for p in answer.temporal]
                store.record_success(
                    dset,
                    name,
                    spatial,
                    temporal,
                    phrases={"spatial": answer.spatial, "temporal": answer.temporal},
                    replace=force,
                    **common,
                )
                summary.done += 1
                summary.failures.pop(name, None)
                if bar:
                    bar.advance(ok=True)

            be.run(requests, on_done)
            # A class the backend did not report at all counts as failed in this run.
            for name in pending:
                if name not in reported:
                    summary.failed += 1
                    summary.failures[name] = "the backend returned no response"
                    if bar:
                        bar.advance(ok=False)
            pending = retry
    finally:
        if bar:
            bar.close()


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
    """A rich progress bar on stderr (no-op when rich cannot draw)."""

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
