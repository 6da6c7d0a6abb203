"""Validation of an LLM answer: exactly N distinct, non-empty, length-bounded phrases per kind."""

from __future__ import annotations

import json
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator


class InvalidAnswer(Exception):
    """The answer does not satisfy the output contract; ``str(exc)`` is a one-line reason."""


@dataclass(frozen=True)
class Limits:
    n: int
    min_chars: int = 1
    max_chars: int = 200


def clean_phrase(phrase: str) -> str:
    """Collapse whitespace and drop a trailing period (the sentence template adds its own)."""
    text = " ".join(phrase.split())
    while text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text


def _norm(phrase: str) -> str:
    return " ".join(phrase.split()).casefold()


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    spatial: list[str]
    temporal: list[str]

    @field_validator("spatial", "temporal")
    @classmethod
    def _check(cls, value: list[str], info: ValidationInfo) -> list[str]:
        limits: Limits = (info.context or {}).get("limits") or Limits(n=len(value))
        kind = info.field_name
        if len(value) != limits.n:
            raise ValueError(f"{kind}: expected {limits.n} phrases, got {len(value)}")
        cleaned = [clean_phrase(p) for p in value]
        seen: dict[str, int] = {}
        for i, phrase in enumerate(cleaned):
            if not phrase:
                raise ValueError(f"{kind}[{i}] is empty")
            if len(phrase) < limits.min_chars:
                raise ValueError(f"{kind}[{i}] is too short ({len(phrase)} < {limits.min_chars} characters)")
            if len(phrase) > limits.max_chars:
                raise ValueError(f"{kind}[{i}] is too long ({len(phrase)} > {limits.max_chars} characters)")
            key = _norm(phrase)
            if key in seen:
                raise ValueError(f"{kind}[{i}] repeats {kind}[{seen[key]}]")
            seen[key] = i
        return cleaned


def _reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err.get("loc", ()))
        typ = err.get("type", "")
        if typ == "value_error":
            msg = str(err.get("ctx", {}).get("error", err.get("msg", "")))
            parts.append(msg)
        elif typ == "missing":
            parts.append(f"missing key {loc!r}")
        elif typ == "extra_forbidden":
            parts.append(f"unexpected key {loc!r}")
        else:
            parts.append(f"{loc or 'answer'}: {err.get('msg', typ)}")
    return "; ".join(parts) or "invalid answer"


def validate_answer(text: str | None, limits: Limits) -> Answer:
    """Parse and check an answer; raise InvalidAnswer with a one-line reason."""
    if text is None or not text.strip():
        raise InvalidAnswer("empty answer")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer(f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise InvalidAnswer(f"expected a JSON object, got {type(data).__name__}")
    try:
        return Answer.model_validate(data, context={"limits": limits})
    except ValidationError as exc:
        raise InvalidAnswer(_reason(exc)) from None
