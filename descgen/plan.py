"""What ``descgen generate`` would request: the set, the request keys, what the cache already holds.

``plan(...)`` reads the class list, the prompt and (when it exists) the cache, and sends nothing.
Bad input raises ``GenerateInputError`` before anything is written. A ``Plan`` prints as the text
of ``--dry-run`` or, as a dict, as the JSON of ``--dry-run --json``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descgen.backends import BackendError, resolve_model
from descgen.datasets import ClassList, ClassListError, load_class_list
from descgen.errors import DescgenError
from descgen.prompts import Prompt, PromptError, load_prompt
from descgen.store import Store, StoreError, set_id_for

DEFAULT_CACHE = "cache/descriptions.db"
DEFAULT_N = 2
MAX_N = 64


class GenerateInputError(DescgenError):
    """Bad input detected before anything was written. The message is meant for the user."""


@dataclass
class Plan:
    """One description set to complete: its identity, and which classes to send."""

    classes: ClassList
    prompt: Prompt
    backend: str
    model: str
    params: dict[str, Any]
    n: int
    cache: Path
    set_id: str
    complete: list[str]  # classes whose descriptions are already in the cache
    to_send: list[str]  # classes to request, in class-list order (their names are the request keys)
    max_invalid: int = 2
    force: bool = False
    cache_exists: bool = False

    @property
    def cached(self) -> int:
        """Classes taken from the cache (none with force)."""
        return 0 if self.force else len(self.complete)

    def to_dict(self) -> dict[str, Any]:
        return {
            "set_id": self.set_id,
            "dataset": self.classes.name,
            "classes_source": self.classes.source,
            "prompt": {"name": self.prompt.label, "fingerprint": self.prompt.fingerprint},
            "backend": self.backend,
            "model": self.model,
            "params": self.params,
            "n": self.n,
            "cache": str(self.cache),
            "cache_exists": self.cache_exists,
            "force": self.force,
            "classes": len(self.classes.names),
            "complete": self.cached,
            "to_send": len(self.to_send),
            "to_send_classes": list(self.to_send),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    def text_lines(self) -> list[str]:
        """The plan as the lines ``--dry-run`` prints."""
        c, p = self.classes, self.prompt
        exists = "" if self.cache_exists else " (does not exist yet)"
        lines = [
            f"dataset   {c.name} ({len(c.names)} classes from {c.source})",
            f"prompt    {p.label} ({p.fingerprint[:16]})",
            f"backend   {self.backend}, model {self.model}",
            f"params    {json.dumps(self.params, sort_keys=True)}, N={self.n}",
            f"cache     {self.cache}{exists}, set {self.set_id}",
            f"cached    {self.cached} classes",
            f"to send   {len(self.to_send)} requests (more if answers are invalid or requests fail)",
        ]
        return lines + [f"  {name}" for name in self.to_send]


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
    """The prompt's sampling parameters with the overrides applied, checked and typed."""
    params = prompt.sampling
    for key, value in (("temperature", temperature), ("seed", seed), ("max_tokens", max_tokens)):
        if value is not None:
            params[key] = value
    if not 0.0 <= float(params["temperature"]) <= 2.0:
        raise GenerateInputError(f"--temperature must be between 0 and 2, got {params['temperature']}")
    if int(params["max_tokens"]) < 16:
        raise GenerateInputError(f"--max-tokens must be at least 16, got {params['max_tokens']}")
    params["temperature"] = float(params["temperature"])
    params["top_p"] = float(params["top_p"])
    params["max_tokens"] = int(params["max_tokens"])
    params["seed"] = int(params["seed"])
    return params


def plan(
    dataset: str | None = None,
    classes_file: str | Path | None = None,
    data_dir: str | Path | None = None,
    cache: str | Path = DEFAULT_CACHE,
    prompt: str | Path | None = None,
    n: int = DEFAULT_N,
    backend: str = "openai",
    model: str | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    max_tokens: int | None = None,
    max_invalid: int = 2,
    force: bool = False,
) -> Plan:
    """Check the input and find what to request; raises GenerateInputError, writes nothing."""
    try:
        classes = load_class_list(dataset, classes_file, data_dir)
        prm = load_prompt(prompt)
    except (ClassListError, PromptError) as exc:
        raise GenerateInputError(str(exc)) from None
    if not 1 <= n <= MAX_N:
        raise GenerateInputError(f"--n must be between 1 and {MAX_N}, got {n}")
    if max_invalid < 0:
        raise GenerateInputError(f"--max-invalid must be 0 or more, got {max_invalid}")
    try:
        model_name = resolve_model(backend, model)
    except BackendError as exc:
        raise GenerateInputError(str(exc)) from None
    params = sampling_params(prm, temperature, seed, max_tokens)
    cache_path = Path(cache)
    if cache_path.is_dir():
        raise GenerateInputError(f"--cache {cache_path} is a directory, not a file")
    set_id = set_id_for(classes.name, prm.fingerprint, backend, model_name, params, n)
    completed = _completed_classes(cache_path, set_id)
    return Plan(
        classes=classes,
        prompt=prm,
        backend=backend,
        model=model_name,
        params=params,
        n=n,
        cache=cache_path,
        set_id=set_id,
        complete=[c for c in classes.names if c in completed],
        to_send=list(classes.names) if force else [c for c in classes.names if c not in completed],
        max_invalid=max_invalid,
        force=force,
        cache_exists=cache_path.exists(),
    )


def _completed_classes(cache_path: Path, set_id: str) -> set[str]:
    """The classes of the set that the cache already completes (none when there is no cache)."""
    if not cache_path.exists():
        return set()
    try:
        store = Store(cache_path, create=False)
    except StoreError as exc:
        raise GenerateInputError(str(exc)) from None
    with store:
        return store.completed_classes(set_id)
