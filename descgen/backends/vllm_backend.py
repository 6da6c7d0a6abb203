"""The in-process vLLM engine as a backend: every request of a run in one batched ``chat`` call.

vLLM is imported only when the engine is first needed, so importing this module is cheap and
works without vLLM installed. Engine options come from ``--vllm-opt KEY=VALUE`` on the command
line (strings, converted here): any keyword argument of ``vllm.LLM`` (``dtype``, ``max_model_len``,
``tokenizer``, ``enforce_eager``, ``gpu_memory_utilization``, ``kv_cache_memory_bytes``, ...), plus
``chat_template``: a Jinja template, or the path of a file holding one, for models whose
tokenizer has none.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from descgen.backends.base import BackendError, Request, Response

INSTALL_HINT = (
    "the 'vllm' backend needs vLLM, which is not installed in this environment. "
    "On a GPU machine: pip install 'msta-toolkit[vllm]'. "
    "On a CPU-only machine: bash scripts/setup_vllm_cpu.sh, then run .venv-vllm/bin/descgen "
    "(or use --backend openai --base-url with a server started by "
    "'descgen serve')."
)

# Options that are not engine arguments but are used by this backend.
_CHAT_OPTIONS = ("chat_template", "chat_template_content_format")

# Compact JSON only: without this, the grammar lets a small model emit whitespace (newlines)
# between JSON tokens until it runs out of tokens, which wastes time and breaks the answer.
STRUCTURED_OUTPUTS_CONFIG = {"backend": "xgrammar", "disable_any_whitespace": True}

# KV cache reserved on the CPU engine unless told otherwise (it otherwise asks for most of the RAM).
CPU_KV_CACHE_BYTES = 1 << 30


def parse_option_value(value: Any) -> Any:
    """Turn a ``KEY=VALUE`` string into an int, float, bool or None where it reads as one."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    lowered = text.lower()
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


class VLLMBackend:
    """Runs requests through ``vllm.LLM.chat`` in this process, with structured outputs."""

    name = "vllm"
    default_model: str | None = None
    model_hint = "--backend vllm needs --model (a Hugging Face name or a local path)"
    option_names = ("vllm_options",)

    @classmethod
    def from_options(cls, model: str, options: dict[str, Any]) -> VLLMBackend:
        return cls(model, **(options.get("vllm_options") or {}))

    def __init__(self, model: str, **options: Any) -> None:
        if importlib.util.find_spec("vllm") is None:
            raise BackendError(INSTALL_HINT)
        self.model = model
        opts = {key.replace("-", "_"): parse_option_value(value) for key, value in options.items()}
        self.chat_options: dict[str, Any] = {}
        for key in _CHAT_OPTIONS:
            if key in opts:
                self.chat_options[key] = opts.pop(key)
        template = self.chat_options.get("chat_template")
        if isinstance(template, str) and "{" not in template:
            path = Path(template).expanduser()
            if not path.is_file():
                raise BackendError(f"chat template file not found: {template}")
            self.chat_options["chat_template"] = path.read_text()
        self.engine_options = opts
        self._llm: Any = None

    def _import_vllm(self) -> Any:
        # Keep the engine's own logging to warnings unless the user asked for more.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        try:
            import vllm
        except ImportError as exc:
            raise BackendError(INSTALL_HINT) from exc
        return vllm

    def _engine_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.engine_options)
        kwargs.setdefault("structured_outputs_config", dict(STRUCTURED_OUTPUTS_CONFIG))
        try:
            from vllm.platforms import current_platform

            on_cpu = current_platform.is_cpu()
        except Exception:
            on_cpu = False
        memory_set = (
            "kv_cache_memory_bytes" in kwargs
            or "gpu_memory_utilization" in kwargs
            or os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        )
        if on_cpu and not memory_set:
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
        if on_cpu and "enable_chunked_prefill" not in kwargs:
            # The CPU engine fails on a seeded request whose prompt was split across steps
            # ("CPU Generator does not use offset"): schedule whole prompts only.
            kwargs["enable_chunked_prefill"] = False
        return kwargs

    def engine(self) -> Any:
        """The ``vllm.LLM`` instance, built on first use and kept for later runs."""
        if self._llm is None:
            vllm = self._import_vllm()
            kwargs = self._engine_kwargs()
            try:
                self._llm = vllm.LLM(model=self.model, **kwargs)
            except Exception as exc:
                raise BackendError(f"cannot start vLLM with model {self.model!r}: {exc}") from exc
        return self._llm

    def _sampling_params(self, request: Request) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        return SamplingParams(
            n=1,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
            # Always explicit: the offline engine's default is only 16 tokens.
            max_tokens=request.max_tokens,
            structured_outputs=StructuredOutputsParams(json=request.schema),
        )

    def run(self, requests: list[Request], on_done: Callable[[Response], None]) -> None:
        if not requests:
            return
        try:
            llm = self.engine()
        except BackendError as exc:  # no engine: every request fails with the reason
            for request in requests:
                on_done(Response(key=request.key, error=str(exc)))
            return
        params = [self._sampling_params(request) for request in requests]
        conversations = [request.messages for request in requests]
        start = time.perf_counter()
        try:
            outputs = llm.chat(conversations, params, use_tqdm=False, **self.chat_options)
        except Exception as exc:  # the whole batch failed: report it on every request
            elapsed = time.perf_counter() - start
            message = f"vLLM generation failed: {type(exc).__name__}: {exc}"
            for request in requests:
                on_done(Response(key=request.key, error=message, latency_s=elapsed))
            return
        elapsed = time.perf_counter() - start
        for request, output in zip(requests, outputs, strict=True):
            on_done(self._response(request, output, elapsed, len(requests)))

    @staticmethod
    def _response(request: Request, output: Any, elapsed: float, batch_size: int) -> Response:
        prompt_tokens = len(output.prompt_token_ids) if output.prompt_token_ids is not None else None
        if not output.outputs:
            return Response(
                key=request.key,
                error="vLLM returned no completion",
                prompt_tokens=prompt_tokens,
                latency_s=elapsed,
            )
        completion = output.outputs[0]
        return Response(
            key=request.key,
            text=completion.text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(completion.token_ids),
            latency_s=elapsed,
            extra={"finish_reason": completion.finish_reason, "batch_size": batch_size},
        )
