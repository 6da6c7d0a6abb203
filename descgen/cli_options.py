"""Typer options that ``generate`` and the ``batch`` commands share, declared once."""

from __future__ import annotations

from pathlib import Path

import typer

_O = typer.Option
CacheOpt = _O(Path("cache/descriptions.db"), "--cache", help="SQLite cache file.")
BaseUrlOpt = _O(
    None,
    "--base-url",
    help="Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (default: the hosted API).",
)
TimeoutOpt = _O(60.0, "--timeout", help="Seconds before one call to the API is abandoned (openai).")
ConcurrencyOpt = _O(8, "--concurrency", help="Online requests in flight at once (openai).")
MaxAttemptsOpt = _O(
    5, "--max-attempts", help="Attempts per online request on 429, 5xx and timeouts (openai)."
)
MaxInvalidOpt = _O(2, "--max-invalid", help="Re-requests (with a new seed) after an invalid answer.")
