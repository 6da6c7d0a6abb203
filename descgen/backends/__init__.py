"""LLM backends behind one small interface (see base.py)."""

from __future__ import annotations

import os
import re
from typing import Any

from descgen.backends.base import Backend, BackendError, Request, Response

__all__ = ["BACKENDS", "Backend", "BackendError", "Request", "Response", "get_backend", "scrub_secrets"]

BACKENDS = ("openai", "vllm")

# Environment variables whose values must never be written anywhere.
SECRET_ENV_VARS = ("OPENAI_API_KEY", "OPENAI_ADMIN_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
_KEY_PATTERNS = (
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]+"), r"\1***"),
    (re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"), "***"),
    (re.compile(r"(?i)(api[_-]?key[\"'=:\s]+)[A-Za-z0-9._\-]{6,}"), r"\1***"),
    (re.compile(r"(//[^/@\s:]+:)[^/@\s]+@"), r"\1***@"),  # password in a URL
)


def scrub_secrets(text: str | None, extra: tuple[str, ...] = (), patterns: bool = True) -> str | None:
    """Remove API keys and similar secrets from a message before it is shown or stored.

    The values of the secret environment variables (and ``extra``) are always replaced; with
    ``patterns``, anything shaped like a key (``Bearer ...``, ``sk-...``, ``api_key=...``, a password
    in a URL) is replaced too.
    """
    if text is None:
        return None
    secrets = [s for s in (*(os.environ.get(v) for v in SECRET_ENV_VARS), *extra) if s and len(s) >= 4]
    for s in sorted(set(secrets), key=len, reverse=True):
        text = text.replace(s, "***")
    if patterns:
        for pat, repl in _KEY_PATTERNS:
            text = pat.sub(repl, text)
    return text


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Create a backend by name; each backend module is imported only when asked for."""
    if name == "openai":
        from descgen.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(**kwargs)
    if name == "vllm":
        try:
            from descgen.backends.vllm_backend import VLLMBackend
        except ImportError as exc:  # the module itself imports vllm lazily; this is a broken install
            raise BackendError(f"the vllm backend cannot be loaded: {exc}") from None
        return VLLMBackend(**kwargs)
    raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
