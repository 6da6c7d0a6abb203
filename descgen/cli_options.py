"""Typer options that several descgen commands share, declared once.

Every command that needs a cache reads ``$DESCGEN_CACHE`` when ``--cache`` is not given (``prompts show``
and ``prompts diff``, for which a cache is an optional extra, read one only when ``--cache`` names it).
"""

from __future__ import annotations

import typer

_O = typer.Option
CACHE_ENV = "DESCGEN_CACHE"
CacheOpt = _O("cache/descriptions.db", "--cache", envvar=CACHE_ENV, help="SQLite cache file.")


ClassesOpt = _O(
    None, "--classes", help="Class list file (id,name CSV, one name per line, classInd.txt, labels.json)."
)
DataDirOpt = _O(
    None, "--data-dir", help="Data directory with labels/{dataset}.csv (default $MSTA_DATA_DIR or ./data)."
)
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
