"""The small interface every LLM backend implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from descgen.errors import DescgenError


class BackendError(DescgenError):
    """A backend cannot be used (missing package, bad configuration). Message is user-facing."""


@dataclass
class Request:
    """One chat request for one class (one attempt)."""

    key: str  # caller's identifier (class name)
    messages: list[dict[str, str]]  # [{"role": "system"|"user", "content": ...}]
    schema: dict[str, Any]  # JSON schema of the expected answer
    schema_name: str
    temperature: float
    max_tokens: int
    seed: int
    top_p: float = 1.0


@dataclass
class Response:
    """What came back for one request. ``error`` set means the request failed after all retries."""

    key: str
    text: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float = 0.0
    error: str | None = None
    attempts: int = 1
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str  # "openai", "vllm", ...
    model: str

    def run(self, requests: list[Request], on_done) -> None:
        """Send all requests; call ``on_done(response)`` for each as soon as it finishes.

        ``on_done`` is called from the calling thread. Implementations bound their own
        concurrency and never raise for a single failed request: they report it in
        ``Response.error`` instead.
        """
        ...


class BackendFactory(Protocol):
    """What the registry needs from a backend class: its defaults, its options, a constructor."""

    name: ClassVar[str]
    default_model: ClassVar[str | None]  # None: the model must be given
    model_hint: ClassVar[str]  # the message when a needed model is missing
    option_names: ClassVar[tuple[str, ...]]  # generation options this backend takes

    @classmethod
    def from_options(cls, model: str, options: dict[str, Any]) -> Backend: ...
