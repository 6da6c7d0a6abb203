"""Versioned prompt files: load, check, render and fingerprint them.

A prompt file is TOML (see ``prompts/*.toml``) with a name, a version, a description, the system
and user message templates, the sentence templates that turn phrases into final sentences, output
bounds used to build the JSON schema for any N, and default sampling parameters.

The fingerprint of a prompt is the sha256 of its canonical content: the canonical JSON (sorted keys,
no insignificant whitespace) of the parsed file. Comments and formatting of the file do not change
it; any change of wording, template or parameter does.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import string
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from descgen.errors import DescgenError

DEFAULT_PROMPT = "msta-general-v1"

MESSAGE_FIELDS = {"dataset", "dataset_description", "class_name", "n"}
SENTENCE_FIELDS = {"phrase", "class_name", "class_lower"}
SAMPLING_KEYS = {"temperature": float, "top_p": float, "max_tokens": int, "n": int, "seed": int}


class PromptError(DescgenError):
    """A prompt cannot be found or is malformed. The message is meant for the user."""


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_text(content: dict) -> str:
    """A readable, deterministic rendering of a prompt's content (used for diffs and display).

    One ``key.path = value`` line per scalar in sorted key order; multi-line strings are written
    as an indented block.
    """
    lines: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k in sorted(value):
                walk(f"{prefix}.{k}" if prefix else k, value[k])
        elif isinstance(value, str) and "\n" in value.strip("\n"):
            lines.append(f"{prefix} =")
            for line in value.strip("\n").split("\n"):
                lines.append(f"    {line}".rstrip())
        else:
            lines.append(
                f"{prefix} = {json.dumps(value.strip() if isinstance(value, str) else value, ensure_ascii=False)}"
            )

    walk("", content)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Prompt:
    name: str
    version: str
    description: str
    content: dict  # the parsed file
    source: str  # path of the file it was read from

    # ------------------------------------------------------------------ identity
    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(canonical_json(self.content).encode("utf-8")).hexdigest()

    @property
    def label(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def canonical(self) -> str:
        """Full canonical content as stored in the cache (pretty canonical JSON)."""
        return json.dumps(self.content, sort_keys=True, indent=2, ensure_ascii=False) + "\n"

    @property
    def text(self) -> str:
        return canonical_text(self.content)

    # ------------------------------------------------------------------ parts
    @property
    def sampling(self) -> dict[str, Any]:
        return dict(self.content["sampling"])

    @property
    def schema_name(self) -> str:
        return str(self.content["output"].get("schema_name", "class_descriptions"))

    @property
    def min_chars(self) -> int:
        return int(self.content["output"].get("min_chars", 1))

    @property
    def max_chars(self) -> int:
        return int(self.content["output"].get("max_chars", 200))

    def messages(
        self, dataset: str, dataset_description: str, class_name: str, n: int
    ) -> list[dict[str, str]]:
        values = {
            "dataset": dataset,
            "dataset_description": dataset_description,
            "class_name": class_name,
            "n": n,
        }
        msgs = self.content["messages"]
        out = []
        for role in ("system", "user"):
            text = msgs.get(role)
            if text:
                out.append({"role": role, "content": text.format(**values).strip()})
        return out

    def schema(self, n: int) -> dict[str, Any]:
        """JSON schema of the answer: ``spatial`` and ``temporal`` arrays of exactly ``n`` strings."""
        out = self.content["output"]

        def array(desc: str | None) -> dict[str, Any]:
            a: dict[str, Any] = {"type": "array", "items": {"type": "string"}, "minItems": n, "maxItems": n}
            if desc:
                a["description"] = desc
            return a

        return {
            "type": "object",
            "properties": {
                "spatial": array(out.get("spatial_description")),
                "temporal": array(out.get("temporal_description")),
            },
            "required": ["spatial", "temporal"],
            "additionalProperties": False,
        }

    def sentence(self, kind: str, phrase: str, class_name: str) -> str:
        template = self.content["sentences"][kind]
        return template.format(phrase=phrase, class_name=class_name, class_lower=class_name.lower())


# ---------------------------------------------------------------------- loading


def _template_fields(template: str, where: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise PromptError(f"{where}: bad template ({exc}); write literal braces as {{{{ and }}}}") from None
    fields = set()
    for _, field, _, _ in parsed:
        if field is None:
            continue
        if field == "" or not field.isidentifier():
            raise PromptError(f"{where}: bad placeholder {{{field}}}; write literal braces as {{{{ and }}}}")
        fields.add(field)
    return fields


def validate_content(content: dict, source: str) -> None:
    """Raise PromptError naming the first problem of a parsed prompt file."""

    def need(table: dict, key: str, typ: type | tuple, where: str) -> Any:
        if key not in table:
            raise PromptError(f"prompt {source}: missing {where}{key}")
        value = table[key]
        if not isinstance(value, typ) or isinstance(value, bool):
            raise PromptError(f"prompt {source}: {where}{key} has the wrong type")
        return value

    for key in ("name", "version", "description"):
        need(content, key, str, "")
    for table in ("messages", "sentences", "output", "sampling"):
        if not isinstance(content.get(table), dict):
            raise PromptError(f"prompt {source}: missing table [{table}]")
    user = need(content["messages"], "user", str, "messages.")
    templates = {"messages.user": user}
    if "system" in content["messages"]:
        templates["messages.system"] = need(content["messages"], "system", str, "messages.")
    for where, tpl in templates.items():
        unknown = _template_fields(tpl, f"prompt {source}, {where}") - MESSAGE_FIELDS
        if unknown:
            raise PromptError(
                f"prompt {source}, {where}: unknown placeholder {{{sorted(unknown)[0]}}} "
                f"(allowed: {', '.join(sorted(MESSAGE_FIELDS))})"
            )
    if "{class_name}" not in user:
        raise PromptError(f"prompt {source}, messages.user: must contain {{class_name}}")
    for kind in ("spatial", "temporal"):
        tpl = need(content["sentences"], kind, str, "sentences.")
        fields = _template_fields(tpl, f"prompt {source}, sentences.{kind}")
        unknown = fields - SENTENCE_FIELDS
        if unknown:
            raise PromptError(
                f"prompt {source}, sentences.{kind}: unknown placeholder {{{sorted(unknown)[0]}}} "
                f"(allowed: {', '.join(sorted(SENTENCE_FIELDS))})"
            )
        if "phrase" not in fields:
            raise PromptError(f"prompt {source}, sentences.{kind}: must contain {{phrase}}")
    out = content["output"]
    lo, hi = out.get("min_chars", 1), out.get("max_chars", 200)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise PromptError(
            f"prompt {source}: output.min_chars/max_chars must be integers with 1 <= min <= max"
        )
    sampling = content["sampling"]
    for key, typ in SAMPLING_KEYS.items():
        value = sampling.get(key)
        ok = isinstance(value, int | float) if typ is float else isinstance(value, int)
        if value is None or isinstance(value, bool) or not ok:
            raise PromptError(f"prompt {source}: sampling.{key} missing or not a number")
    if sampling["n"] != 1:
        raise PromptError(f"prompt {source}: sampling.n must be 1 (one answer per request)")
    unknown_keys = set(sampling) - set(SAMPLING_KEYS)
    if unknown_keys:
        raise PromptError(f"prompt {source}: unknown sampling parameter {sorted(unknown_keys)[0]!r}")


def load_prompt_file(path: str | Path) -> Prompt:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise PromptError(f"cannot read prompt file {p}: {exc.strerror or exc}") from None
    try:
        content = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PromptError(f"prompt file {p} is not valid TOML: {exc}") from None
    validate_content(content, str(p))
    return Prompt(
        name=content["name"],
        version=str(content["version"]),
        description=content["description"],
        content=content,
        source=str(p),
    )


def prompt_from_content(content_text: str, source: str = "cache") -> Prompt:
    """Rebuild a prompt from the canonical JSON stored in the cache."""
    content = json.loads(content_text)
    validate_content(content, source)
    return Prompt(content["name"], str(content["version"]), content["description"], content, source)


def shipped_prompt_files() -> list[Path]:
    root = resources.files("prompts")
    return sorted(Path(str(f)) for f in root.iterdir() if f.name.endswith(".toml"))


def list_prompts() -> list[Prompt]:
    return [load_prompt_file(p) for p in shipped_prompt_files()]


def _version_key(version: str) -> tuple:
    parts = []
    for piece in version.replace("-", ".").split("."):
        parts.append((0, int(piece), "") if piece.isdigit() else (1, 0, piece))
    return tuple(parts)


def load_prompt(name_or_path: str | Path | None = None) -> Prompt:
    """Resolve a prompt: a shipped file stem (``msta-general-v1``), a shipped name (latest version),
    or a path to a ``.toml`` file."""
    ref = str(name_or_path) if name_or_path else DEFAULT_PROMPT
    path = Path(ref).expanduser()
    if ref.endswith(".toml") or path.is_file() or "/" in ref:
        if not path.is_file():
            raise PromptError(f"prompt file not found: {path}")
        return load_prompt_file(path)
    files = shipped_prompt_files()
    for f in files:
        if f.stem == ref:
            return load_prompt_file(f)
    matches = [p for p in (load_prompt_file(f) for f in files) if p.name == ref]
    if matches:
        return max(matches, key=lambda p: _version_key(p.version))
    known = ", ".join(f.stem for f in files) or "none"
    raise PromptError(f"unknown prompt {ref!r}: shipped prompts are {known}; or give a path to a .toml file")


def diff_prompts(a: Prompt, b: Prompt) -> str:
    """Unified diff of the canonical text of two prompts ('' when identical)."""
    lines = difflib.unified_diff(
        a.text.splitlines(keepends=True),
        b.text.splitlines(keepends=True),
        fromfile=f"{a.label} ({a.fingerprint[:12]})",
        tofile=f"{b.label} ({b.fingerprint[:12]})",
    )
    return "".join(lines)
