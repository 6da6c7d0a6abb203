"""LLM backends behind one small interface (see base.py), registered by name.

Each backend class owns its defaults and options: ``name``, ``default_model`` (None when the
model must be given), ``model_hint`` (what to say when it is missing), ``option_names`` (the
generation options it takes) and ``from_options(model, options)``. The registry maps a name to
the module and class, imported only when the backend is used.
"""

from __future__ import annotations

import importlib
import os
import re
from typing import Any

from descgen.backends.base import Backend, BackendError, BackendFactory, Request, Response

__all__ = [
    "Backend",
    "BackendError",
    "BackendFactory",
    "Request",
    "Response",
    "backend_class",
    "create_backend",
    "get_backend",
    "option_names",
    "register_backend",
    "scrub_secrets",
]

# name -> "module:Class"; the module is imported on first use.
_REGISTRY: dict[str, str] = {
    "openai": "descgen.backends.openai_backend:OpenAIBackend",
    "vllm": "descgen.backends.vllm_backend:VLLMBackend",
}

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


def register_backend(name: str, target: str) -> None:
    """Make ``target`` ("module:Class", a ``BackendFactory``) available as backend ``name``."""
    _REGISTRY[name] = target


def backend_class(name: str) -> BackendFactory:
    """The class of backend ``name``; BackendError for an unknown name or a broken install."""
    target = _REGISTRY.get(name)
    if target is None:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(_REGISTRY)}")
    module, _, attr = target.partition(":")
    try:  # backend modules import their heavy libraries lazily; failing here is a broken install
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"the {name} backend cannot be loaded: {exc}") from None


def option_names() -> frozenset[str]:
    """Every generation option some registered backend takes."""
    return frozenset(name for backend in _REGISTRY for name in backend_class(backend).option_names)


def resolve_model(name: str, model: str | None) -> str:
    """The model a backend will use: the one given, else its default; BackendError if it has none."""
    cls = backend_class(name)
    if model:
        return model
    if cls.default_model is None:
        raise BackendError(cls.model_hint or f"--backend {name} needs --model")
    return cls.default_model


def create_backend(name: str, model: str | None, options: dict[str, Any] | None = None) -> Backend:
    """Create backend ``name`` from the generation options; those it does not take are ignored."""
    cls = backend_class(name)
    chosen = {k: v for k, v in (options or {}).items() if k in cls.option_names and v is not None}
    return cls.from_options(resolve_model(name, model), chosen)


def get_backend(name: str, **kwargs: Any) -> Backend:
    """Create a backend by name with its constructor's keyword arguments."""
    cls: Any = backend_class(name)
    return cls(**kwargs)
