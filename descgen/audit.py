"""Quality checks over a description set.

Each finding names a class, a kind (``spatial``, ``temporal``, or ``both`` for class-level
problems), a check and a message. The checks:

``missing``         the class has no descriptions of a kind the set holds
``count``           the class has some descriptions of a kind, but not N
``empty``           a description is empty (or only the sentence template)
``duplicate``       the same sentence twice in a class and kind (case- and space-insensitive)
``near_duplicate``  two classes whose mean embeddings (per kind) have cosine >= a threshold;
                    only when the set has embeddings (``descgen encode``)
``too_long``        a description longer than the encoder's context (tokenizer count, or the
                    truncation recorded when it was encoded)
``invalid``/``error`` failed requests, with their reason, for classes that have no valid answer
``leak``            a spatial description that only restates the class name

JSON shape (``AuditReport.to_dict``), with sorted keys::

    {"dataset": str, "set": {"id", "backend", "model", "prompt", "n", "kinds"},
     "classes": int, "class_source": str, "encoder": str | null,
     "checks": {check: "on" | "off: reason"}, "counts": {check: int},
     "findings": [{"class", "kind", "check", "message", "index", "other_class", "generation_id"}]}
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from descgen.encode import set_kinds
from descgen.pricing import PriceTable, load_price_table
from descgen.store import DescriptionSet, Store, text_hash

DEFAULT_NEAR_DUP = 0.95
DEFAULT_TOKENIZER_MODEL = "ViT-B-16"
DEFAULT_CONTEXT = 77

# "A video about ...", "a photo of ...": the sentence frame around the phrase.
_FRAME = re.compile(
    r"^\s*(?:(?:a|an|the)\s+)?(?:video|photo|picture|image|clip|footage)\s+"
    r"(?:about|of|showing|shows|depicting)\s+",
    re.IGNORECASE,
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_ARTICLES = {"a", "an", "the"}


@dataclass
class Finding:
    class_name: str
    kind: str
    check: str
    message: str
    index: int | None = None
    other_class: str | None = None
    generation_id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.class_name,
            "kind": self.kind,
            "check": self.check,
            "message": self.message,
            "index": self.index,
            "other_class": self.other_class,
            "generation_id": self.generation_id,
        }


@dataclass
class AuditReport:
    dataset: str
    set: DescriptionSet
    classes: list[str]
    class_source: str
    encoder: str | None
    checks: dict[str, str]
    findings: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c = Counter(f.check for f in self.findings)
        return {k: c[k] for k in sorted(c)}

    def flagged_classes(self) -> set[str]:
        out = {f.class_name for f in self.findings}
        out |= {f.other_class for f in self.findings if f.other_class}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "set": {
                "id": self.set.id,
                "backend": self.set.backend,
                "model": self.set.model,
                "prompt": self.set.prompt_fp,
                "n": self.set.n,
                "kinds": list(set_kinds(self.set)),
            },
            "classes": len(self.classes),
            "class_source": self.class_source,
            "encoder": self.encoder,
            "checks": dict(sorted(self.checks.items())),
            "counts": self.counts(),
            "findings": [f.to_dict() for f in self.findings],
        }


def _norm_sentence(text: str) -> str:
    return " ".join(text.split()).casefold()


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _content_words(text: str) -> Counter:
    return Counter(_stem(w) for w in _WORD.findall(text.casefold()) if w not in _ARTICLES)


def strip_frame(text: str) -> str:
    """The phrase inside a sentence frame such as ``A video about ...``."""
    return _FRAME.sub("", text, count=1).strip().rstrip(".!?;:, ").strip()


def is_leak(text: str, class_name: str) -> bool:
    """True when the description, without its frame, says nothing but the class name."""
    body = _content_words(strip_frame(text))
    return bool(body) and body == _content_words(class_name)


class _TokenCounter:
    """Counts tokens with the encoder's tokenizer (CLIP BPE), including start and end tokens."""

    def __init__(self, model_name: str | None, context_length: int):
        self.context_length = context_length
        self.model_name = model_name or DEFAULT_TOKENIZER_MODEL
        self._encode = None
        self.available = False
        try:
            import open_clip

            tok = None
            if self.model_name in open_clip.list_models():
                tok = open_clip.get_tokenizer(self.model_name)
            if tok is None or type(tok).__name__ != "SimpleTokenizer":
                tok = open_clip.SimpleTokenizer(context_length=context_length)
            self._encode = tok.encode
            self.available = True
        except Exception:  # noqa: BLE001 - without a tokenizer the recorded truncation is used
            self.available = False

    def count(self, text: str) -> int | None:
        if self._encode is None:
            return None
        return len(self._encode(text)) + 2


def encoder_context(enc: dict | None) -> int:
    """The text context (tokens, start and end included) of the encoder a set is audited against:
    the one its row records, else the context of its model (ViCLIP 32, open_clip 77 for most; a
    row of an older cache may lack it), else open_clip's usual context (no model to load)."""
    if enc and enc.get("context_length"):
        return int(enc["context_length"])
    if not enc or not enc.get("model_name"):
        return DEFAULT_CONTEXT
    from descgen.encoders import context_length

    try:
        return context_length(enc["model_name"])
    except Exception:  # noqa: BLE001 - a model that cannot be resolved here: open_clip's usual context
        return DEFAULT_CONTEXT


def _pick_encoder(store: Store, set_: DescriptionSet, encoder_fp: str | None) -> dict | None:
    if encoder_fp:
        enc = store.get_encoder(encoder_fp)
        if enc is None:
            matches = [e for e in store.list_encoders() if e["fingerprint"].startswith(encoder_fp)]
            if len(matches) == 1:
                return matches[0]
            from descgen.encode import DescgenDataError

            known = ", ".join(e["fingerprint"] for e in store.list_encoders()) or "none"
            raise DescgenDataError(
                f"encoder {encoder_fp!r} not found in {store.path} (encoders there: {known})"
            )
        return enc
    used = store.encoders_for_set(set_.id)
    return used[0] if used else None


@dataclass
class AuditContext:
    """What the checks read: the set's descriptions, failed requests, embeddings and tokenizer."""

    set: DescriptionSet
    classes: list[str]  # the class list first, then classes found only in the cache
    descs: dict[str, dict[str, list[str]]]  # class -> kind -> sentences
    gen_of: dict[tuple[str, str, int], int]  # (class, kind, index) -> generation id
    failed: dict[str, list[dict]]  # class -> its failed requests, for classes with no valid answer
    kinds: Sequence[str]
    encoder: dict | None  # the encoder whose embeddings are used, if any
    context: int  # the encoder's context length in tokens
    counter: _TokenCounter | None
    embeddings: dict[str, dict]  # text hash -> embedding row of ``encoder``
    near_dup_threshold: float = DEFAULT_NEAR_DUP

    def texts(self, class_name: str, kind: str) -> list[str]:
        return self.descs.get(class_name, {}).get(kind, [])

    def sentences(self, kinds: Sequence[str] | None = None):
        """(class, kind, index, text, generation id) of every description, in class-list order."""
        for c in self.classes:
            for kind in kinds or self.kinds:
                for i, t in enumerate(self.texts(c, kind)):
                    yield c, kind, i, t, self.gen_of.get((c, kind, i))

    def tokens(self, text: str) -> int | None:
        return self.counter.count(text) if self.counter is not None and self.counter.available else None


def _context(
    store: Store,
    set_: DescriptionSet,
    class_names: Sequence[str] | None,
    encoder_fp: str | None,
    near_dup_threshold: float,
    use_tokenizer: bool,
) -> AuditContext:
    descs = store.descriptions(set_.id)
    gens = store.generations(set_.id)
    classes = list(class_names) if class_names is not None else []
    classes += sorted((set(descs) | {g["class_name"] for g in gens}) - set(classes))
    ok_classes = {g["class_name"] for g in gens if g["status"] in ("ok", "superseded")}
    failed: dict[str, list[dict]] = {}
    for g in gens:
        if g["status"] in ("invalid", "error") and g["class_name"] not in ok_classes:
            failed.setdefault(g["class_name"], []).append(g)
    kinds = set_kinds(set_)
    enc = _pick_encoder(store, set_, encoder_fp)
    context = encoder_context(enc)
    hashes = [text_hash(t) for c in descs.values() for k in kinds for t in c.get(k, [])]
    return AuditContext(
        set=set_,
        classes=classes,
        descs=descs,
        gen_of={
            (r["class_name"], r["kind"], r["idx"]): r["generation_id"]
            for r in store.description_rows(set_.id)
        },
        failed=failed,
        kinds=kinds,
        encoder=enc,
        context=context,
        counter=_TokenCounter(enc["model_name"] if enc else None, context) if use_tokenizer else None,
        embeddings=store.get_embeddings(enc["fingerprint"], hashes) if enc else {},
        near_dup_threshold=near_dup_threshold,
    )


# ---------------------------------------------------------------------- the checks


def _check_missing(ctx: AuditContext) -> Iterable[Finding]:
    for c in ctx.classes:
        for kind in ctx.kinds:
            if not ctx.texts(c, kind):
                yield Finding(c, kind, "missing", f"no {kind} descriptions")


def _check_count(ctx: AuditContext) -> Iterable[Finding]:
    n = ctx.set.n
    for c in ctx.classes:
        for kind in ctx.kinds:
            texts = ctx.texts(c, kind)
            if texts and len(texts) != n:
                msg = f"{len(texts)} {kind} descriptions, expected {n}"
                yield Finding(c, kind, "count", msg, generation_id=ctx.gen_of.get((c, kind, 0)))


def _check_empty(ctx: AuditContext) -> Iterable[Finding]:
    for c, kind, i, t, gid in ctx.sentences():
        if not t.strip() or not strip_frame(t):
            yield Finding(c, kind, "empty", f"description {i + 1} is empty: {t!r}", i, None, gid)


def _check_duplicate(ctx: AuditContext) -> Iterable[Finding]:
    seen: dict[tuple[str, str, str], int] = {}
    for c, kind, i, t, gid in ctx.sentences():
        key = (c, kind, _norm_sentence(t))
        if key in seen:
            msg = f"description {i + 1} repeats description {seen[key] + 1}: {t.strip()!r}"
            yield Finding(c, kind, "duplicate", msg, i, None, gid)
        else:
            seen[key] = i


def _check_too_long(ctx: AuditContext) -> Iterable[Finding]:
    for c, kind, i, t, gid in ctx.sentences():
        n_tok = ctx.tokens(t)
        row = ctx.embeddings.get(text_hash(t))
        if n_tok is not None:
            over, count = n_tok > ctx.context, n_tok
        else:
            over, count = row is not None and bool(row["truncated"]), row["n_tokens"] if row else None
        if over:
            msg = (
                f"description {i + 1} has {count} tokens, over the encoder context of {ctx.context} "
                "(cut when encoded)"
            )
            yield Finding(c, kind, "too_long", msg, i, None, gid)


def _too_long_status(ctx: AuditContext) -> str:
    if ctx.counter is not None and ctx.counter.available:
        return "on"
    return "on (recorded truncation only)" if ctx.encoder else "off: no tokenizer and no embeddings"


def _check_leak(ctx: AuditContext) -> Iterable[Finding]:
    for c, kind, i, t, gid in ctx.sentences(kinds=[k for k in ctx.kinds if k == "spatial"]):
        if is_leak(t, c):
            msg = f"description {i + 1} only restates the class name: {t.strip()!r}"
            yield Finding(c, kind, "leak", msg, i, None, gid)


def _check_failed(status: str, ctx: AuditContext) -> Iterable[Finding]:
    for c in ctx.classes:
        bad = [g for g in ctx.failed.get(c, []) if g["status"] == status]
        if bad:
            last = bad[-1]
            msg = f"{len(bad)} failed request(s); last reason: {last.get('error') or 'unknown'}"
            yield Finding(c, "both", status, msg, generation_id=last["id"])


def _check_near_duplicate(ctx: AuditContext) -> Iterable[Finding]:
    if ctx.encoder is None:
        return []
    return _near_duplicates(ctx.classes, ctx.descs, ctx.kinds, ctx.embeddings, ctx.near_dup_threshold)


def _near_duplicate_status(ctx: AuditContext) -> str:
    if ctx.encoder is None:
        return "off: no embeddings for this set (run descgen encode)"
    if ctx.encoder.get("random_weights"):
        return "on (random-weight encoder: similarities are not meaningful)"
    return "on"


@dataclass(frozen=True)
class Check:
    """A named check: ``find`` yields its findings, ``status`` says whether it could run fully."""

    name: str
    find: Callable[[AuditContext], Iterable[Finding]]
    status: Callable[[AuditContext], str] = lambda ctx: "on"


CHECK_TABLE: tuple[Check, ...] = (
    Check("missing", _check_missing),
    Check("count", _check_count),
    Check("empty", _check_empty),
    Check("duplicate", _check_duplicate),
    Check("near_duplicate", _check_near_duplicate, _near_duplicate_status),
    Check("too_long", _check_too_long, _too_long_status),
    Check("invalid", partial(_check_failed, "invalid")),
    Check("error", partial(_check_failed, "error")),
    Check("leak", _check_leak),
)


def audit_set(
    store: Store,
    set_: DescriptionSet,
    class_names: Sequence[str] | None = None,
    class_source: str = "cache",
    encoder_fp: str | None = None,
    near_dup_threshold: float = DEFAULT_NEAR_DUP,
    use_tokenizer: bool = True,
) -> AuditReport:
    """Run every check over one set. ``class_names``: the dataset's class list (else the set's classes)."""
    ctx = _context(store, set_, class_names, encoder_fp, near_dup_threshold, use_tokenizer)
    findings = [f for check in CHECK_TABLE for f in check.find(ctx)]
    order = {c: i for i, c in enumerate(ctx.classes)}
    findings.sort(
        key=lambda f: (
            order.get(f.class_name, len(order)),
            f.class_name,
            f.kind,
            f.check,
            -1 if f.index is None else f.index,
            f.other_class or "",
        )
    )
    return AuditReport(
        dataset=set_.dataset,
        set=set_,
        classes=ctx.classes,
        class_source=class_source,
        encoder=ctx.encoder["fingerprint"] if ctx.encoder else None,
        checks={check.name: check.status(ctx) for check in CHECK_TABLE},
        findings=findings,
    )


def _near_duplicates(
    classes: list[str], descs: dict, kinds: Sequence[str], emb: dict[str, dict], threshold: float
) -> list[Finding]:
    import numpy as np

    out: list[Finding] = []
    for kind in kinds:
        names: list[str] = []
        means: list[np.ndarray] = []
        for c in classes:
            texts = descs.get(c, {}).get(kind, [])
            rows = [emb.get(text_hash(t)) for t in texts]
            if not texts or any(r is None for r in rows):
                continue
            vecs = np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows]).astype(np.float64)
            vecs /= np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
            m = vecs.mean(axis=0)
            means.append(m / max(np.linalg.norm(m), 1e-12))
            names.append(c)
        if len(names) < 2:
            continue
        mat = np.stack(means)
        sim = mat @ mat.T
        ii, jj = np.nonzero(np.triu(sim >= threshold, k=1))
        for i, j in zip(ii.tolist(), jj.tolist(), strict=True):
            out.append(
                Finding(
                    names[i],
                    kind,
                    "near_duplicate",
                    f"mean {kind} embedding has cosine {sim[i, j]:.3f} with class {names[j]!r} "
                    f"(threshold {threshold})",
                    None,
                    names[j],
                )
            )
    return out


# ---------------------------------------------------------------------- show: one class's whole chain


def class_chain(store: Store, set_: DescriptionSet, class_name: str, values: int = 5) -> dict[str, Any]:
    """Everything behind one class of a set: prompt, requests, raw responses, sentences, embeddings."""
    prompt = store.get_prompt(set_.prompt_fp) or {}
    descriptions = [
        _description_entry(r, store.embedding_rows_for_text(r["text_hash"]), values)
        for r in store.description_rows(set_.id, class_name)
    ]
    return {
        "dataset": set_.dataset,
        "class": class_name,
        "set": {
            "id": set_.id,
            "backend": set_.backend,
            "model": set_.model,
            "n": set_.n,
            "params": set_.params,
        },
        "prompt": {
            "fingerprint": set_.prompt_fp,
            "name": prompt.get("name"),
            "version": prompt.get("version"),
            "content": prompt.get("content"),
        },
        "generations": [_generation_entry(g) for g in store.generations(set_.id, class_name=class_name)],
        "descriptions": descriptions,
    }


def _description_entry(r: dict, embedding_rows: Iterable[dict], values: int) -> dict[str, Any]:
    return {
        "kind": r["kind"],
        "index": r["idx"],
        "text": r["text"],
        "phrase": r["phrase"],
        "text_hash": r["text_hash"],
        "generation_id": r["generation_id"],
        "embeddings": [_embedding_entry(e, values) for e in embedding_rows],
    }


def _embedding_entry(e: dict, values: int) -> dict[str, Any]:
    from descgen.encode import vector_from_row

    vec = vector_from_row(e)
    norm = sum(v * v for v in vec) ** 0.5
    return {
        "encoder": e["encoder_fp"],
        "model": e["model_name"],
        "pretrained": e["pretrained"],
        "random_weights": bool(e["random_weights"]),
        "dim": e["dim"],
        "dtype": e["dtype"],
        "norm": round(norm, 6),
        "first": [round(v, 6) for v in vec[:values]],
        "n_tokens": e["n_tokens"],
        "truncated": bool(e["truncated"]),
    }


def _generation_entry(g: dict) -> dict[str, Any]:
    req = g.get("request")
    try:
        req = json.loads(req) if isinstance(req, str) else req
    except ValueError:
        pass
    return {
        "id": g["id"],
        "status": g["status"],
        "error": g["error"],
        "attempt": g["attempt"],
        "seed": g["seed"],
        "params": json.loads(g["params"]) if g.get("params") else None,
        "request": req,
        "raw_response": g["raw_response"],
        "prompt_tokens": g["prompt_tokens"],
        "completion_tokens": g["completion_tokens"],
        "latency_s": g["latency_s"],
        "created_at": g["created_at"],
    }


# ---------------------------------------------------------------------- usage and cost


def _usage_row(r: dict, batch: dict | None, table: PriceTable) -> dict[str, Any]:
    """One backend/model row: requests, tokens, the batch share, and the cost with the batch discount.

    ``online_cost_usd``: every answer at the online price. ``batch_cost_usd``: the answers that came
    through a batch at ``batch_discount`` times the online price; ``batch_saving_usd``: what that saved.
    ``cost_usd``: the estimated cost, online minus the saving. Costs are None when the model has no price.
    """
    batch = batch or {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    costs = table.costs(
        r["backend"],
        r["model"],
        (r["prompt_tokens"], r["completion_tokens"]),
        (batch["prompt_tokens"], batch["completion_tokens"]),
    )
    return {
        "backend": r["backend"],
        "model": r["model"],
        "requests": r["requests"],
        "ok": r["ok"],
        "invalid": r["invalid"],
        "errors": r["errors"],
        "prompt_tokens": r["prompt_tokens"],
        "completion_tokens": r["completion_tokens"],
        "latency_s": round(float(r["latency_s"] or 0.0), 3),
        "batch_requests": batch["requests"],
        "batch_prompt_tokens": batch["prompt_tokens"],
        "batch_completion_tokens": batch["completion_tokens"],
        **costs,
    }


def _failures(store: Store) -> list[dict[str, Any]]:
    return [
        {
            "backend": f["backend"],
            "model": f["model"],
            "status": f["status"],
            "reason": f["error"] or "",
            "count": f["count"],
        }
        for f in store.failures_by_reason()
    ]


_COSTS = ("cost_usd", "online_cost_usd", "batch_cost_usd", "batch_saving_usd")


def usage_report(store: Store, pricing_path: str | None = None) -> dict[str, Any]:
    """Requests, tokens and estimated cost per backend and model, and failures by reason.

    Answers that came through a batch are priced at the table's ``batch_discount`` times the online
    price; the report also says what every answer would have cost online and the saving.
    """
    table = load_price_table(pricing_path)
    batch = {(b["backend"], b["model"]): b for b in store.batch_usage()}
    rows = [_usage_row(r, batch.get((r["backend"], r["model"])), table) for r in store.usage()]
    priced = [r for r in rows if r["cost_usd"] is not None]
    totals = {f"total_{key}": round(sum(r[key] for r in priced), 6) for key in _COSTS}
    for r in rows:
        r.update({key: None if r[key] is None else round(r[key], 6) for key in _COSTS})
    return {
        "models": rows,
        "failures": _failures(store),
        "batch_discount": table.batch_discount,
        "batch_requests": sum(r["batch_requests"] for r in rows),
        **totals,
        "cost_complete": len(priced) == len(rows),
    }
