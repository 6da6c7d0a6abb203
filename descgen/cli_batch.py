"""Command functions: ``batch status``, ``batch collect`` and ``batch cancel`` (registered by descgen.cli)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from descgen import cli_options as shared

_O = typer.Option
FileOpt = _O(None, "--file", help="Output file of vLLM's run_batch to ingest instead of the API's batches.")
WaitOpt = _O(False, "--wait", help="Poll (with backoff) until every batch is finished, then collect.")
PollOpt = _O(5.0, "--poll", help="Seconds before the first poll with --wait (doubles up to 5 minutes).")


def status_cmd(
    cache: Path = shared.CacheOpt,
    base_url: str | None = shared.BaseUrlOpt,
    timeout: float = shared.TimeoutOpt,
) -> None:
    """List the recorded batches with their state and counts (refreshed from the API when reachable)."""
    from descgen.batch import batch_status

    rows, problem = batch_status(cache, {"base_url": base_url, "timeout": timeout})
    if problem:
        typer.echo(f"not refreshed: {problem}", err=True)
    if not rows:
        typer.echo(f"no batches in {cache}")
    for b in rows:
        done = "collected" if b["collected_at"] else "not collected"
        counts = f"{b['completed'] or 0}/{b['requests']} done, {b['failed'] or 0} failed"
        typer.echo(f"{b['id']:<34} {b['kind']:<4} {b['status']:<11} {counts:<24} {done:<13} {b['model']}")


def collect_cmd(
    cache: Path = shared.CacheOpt,
    file: Path | None = FileOpt,
    base_url: str | None = shared.BaseUrlOpt,
    max_invalid: int = shared.MaxInvalidOpt,
    wait: bool = WaitOpt,
    poll: float = PollOpt,
    timeout: float = shared.TimeoutOpt,
    concurrency: int = shared.ConcurrencyOpt,
    max_attempts: int = shared.MaxAttemptsOpt,
) -> None:
    """Download finished batches (or read --file), validate and store every answer; safe to repeat."""
    from descgen.batch import BatchError, api_client, collect, collect_file, collect_wait, open_cache

    if max_invalid < 0:
        raise BatchError(f"--max-invalid must be 0 or more, got {max_invalid}")
    if not cache.exists():
        raise BatchError(f"no cache at {cache}")
    options = dict(base_url=base_url, concurrency=concurrency, timeout=timeout, max_attempts=max_attempts)
    with open_cache(cache, create=False) as store:
        if file is not None:  # online retries of a batch file's invalid answers need a server
            summary = collect_file(store, file, max_invalid, options if base_url else None)
        else:
            client = api_client(base_url, timeout)
            if wait:
                summary = collect_wait(store, client, max_invalid, options, poll_s=poll, out=sys.stderr)
            else:
                summary = collect(store, client, max_invalid, options)
    typer.echo(summary.line())
    raise typer.Exit(summary.exit_code)


def cancel_cmd(
    batch_id: str = typer.Argument(..., help="The batch id (see `descgen batch status`)."),
    cache: Path = shared.CacheOpt,
    base_url: str | None = shared.BaseUrlOpt,
    timeout: float = shared.TimeoutOpt,
) -> None:
    """Cancel a submitted batch (what finished before is still collected)."""
    from descgen.batch import BatchError, api_client, cancel, open_cache

    if not cache.exists():
        raise BatchError(f"no cache at {cache}")
    with open_cache(cache, create=False) as store:
        state = cancel(store, api_client(base_url, timeout), batch_id)
    typer.echo(f"{batch_id}: {state}")


COMMANDS = {"status": status_cmd, "collect": collect_cmd, "cancel": cancel_cmd}
