"""Pre-encode descriptions with a frozen text encoder, and load them for training.

The encoder is the text tower of an open_clip model or of ViCLIP, with no adapters: the "frozen branch" of the
MSTA consistency loss. Embeddings are keyed by the sha256 of the description text and by the
encoder fingerprint, ``{model name}@{hash of the text-tower weights}``. The fingerprint depends on
the weights only, so a model built by the trainer from the same checkpoint (see
:meth:`TextEncoder.from_model`) finds the embeddings written by ``descgen encode``.

Batches are cut to the longest end-of-text position in the batch. For a causal text tower every
position only attends to earlier ones, so the features at the end-of-text token do not depend on
the padding after it: the cut is exact and saves most of the work on short sentences.

torch and open_clip are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from descgen.encoders import DescgenDataError, EncoderLoadError  # noqa: F401 - re-exported
from descgen.store import KINDS, DescriptionSet, Store, text_hash

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEFAULT_MODEL = "ViT-B-16"
DEFAULT_PRETRAINED = "openai"
RANDOM_SEED = 0


class SetSelectionError(DescgenDataError):
    """No description set, or more than one, matches what was asked for."""


class MissingDescriptionsError(DescgenDataError):
    """Some classes have no (or not enough) descriptions or embeddings. ``.classes`` lists them."""

    def __init__(self, message: str, classes: Sequence[str]):
        super().__init__(message)
        self.classes = list(classes)


class RandomWeightsWarning(UserWarning):
    """Embeddings are computed with randomly initialised weights (only useful for tests)."""


# ---------------------------------------------------------------------- the encoder


@dataclass
class TextEncoder:
    """A frozen text model (an open_clip model, or ViCLIP's text tower) with its tokenizer and the
    fingerprint of its text weights."""

    model: Any
    tokenizer: Any
    model_name: str
    pretrained: str
    fingerprint: str
    weights_hash: str
    context_length: int
    dim: int
    random_weights: bool = False
    device: str = "cpu"
    _bpe: Callable[[str], list[int]] | None = field(default=None, repr=False)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        model_name: str,
        pretrained: str,
        random_weights: bool | None = None,
    ) -> TextEncoder:
        """Wrap an already built open_clip model (for example a training backbone).

        The fingerprint is computed from its text-tower weights, so it equals the one of
        ``descgen encode`` for the same architecture and weights. Pass the plain backbone (no
        adapters in its text tower): every text parameter counts in the fingerprint. The model's
        train/eval mode is left as it is; encoding runs in eval mode and restores it.
        """

        name = canonical_model_name(model_name)
        whash = text_weights_hash(model)
        ctx = int(getattr(tokenizer, "context_length", None) or _model_context_length(model))
        device = str(next(model.parameters()).device)
        dim = _text_dim(model)
        if random_weights is None:
            random_weights = str(pretrained).lower() in ("", "none", "random")
        # Only the plain CLIP BPE tokenizer exposes an encode() without special tokens.
        bpe = getattr(tokenizer, "encode", None)
        if type(tokenizer).__name__ != "SimpleTokenizer" or getattr(tokenizer, "reduction_fn", None):
            bpe = None
        return cls(
            model=model,
            tokenizer=tokenizer,
            model_name=name,
            pretrained=str(pretrained),
            fingerprint=f"{name}@{whash[:16]}",
            weights_hash=whash,
            context_length=ctx,
            dim=dim,
            random_weights=bool(random_weights),
            device=device,
            _bpe=bpe if callable(bpe) else None,
        )

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` including start and end tokens, before any truncation."""
        if self._bpe is not None:
            try:
                return len(self._bpe(text)) + 2
            except Exception:  # noqa: BLE001 - tokenizers differ; fall back below
                pass
        ids = self.tokenizer([text])[0]
        return int((ids != 0).sum().item())

    def register(self, store: Store) -> None:
        store.ensure_encoder(
            self.fingerprint,
            self.model_name,
            self.pretrained,
            self.weights_hash,
            self.context_length,
            self.dim,
            self.random_weights,
        )


def _text_dim(model: Any) -> int:
    """Output width of the text tower, read from its projection (or its width without one)."""
    tower = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") else model
    proj = getattr(tower, "text_projection", None)
    if proj is not None:
        return int(proj.out_features if hasattr(proj, "out_features") else proj.shape[-1])
    return int(getattr(tower, "output_dim", None) or tower.ln_final.weight.shape[0])


def canonical_model_name(model: str) -> str:
    """``ViT-B-16`` stays as is; ``path/to/clip-tiny.json`` becomes ``clip-tiny``."""
    s = str(model)
    if s.endswith(".json"):
        return Path(s).stem
    return s


def _model_context_length(model: Any) -> int:
    ctx = getattr(model, "context_length", None)
    if ctx is None and hasattr(model, "text"):
        ctx = getattr(model.text, "context_length", None)
    return int(ctx or 77)


def text_weights_hash(model: Any) -> str:
    """sha256 over the text tower's parameters and buffers (name, shape, float32 bytes), sorted by name.

    The image tower and the logit scale are left out: embeddings only depend on the text tower.
    The text tower's activation function is part of the identity too (the same weights run with
    GELU or QuickGELU give different embeddings).
    """
    import torch

    h = hashlib.sha256()
    acts = sorted(
        {
            type(m).__name__
            for n, m in model.named_modules()
            if not n.startswith("visual") and "GELU" in type(m).__name__
        }
    )
    if acts and acts != ["GELU"]:
        h.update(("activation:" + ",".join(acts)).encode("ascii"))
    state = model.state_dict()
    for name in sorted(state):
        if name.startswith("visual.") or name.split(".")[-1] in ("logit_scale", "logit_bias"):
            continue
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu")
        if t.is_floating_point():
            t = t.to(torch.float32)
        h.update(name.encode("utf-8"))
        h.update(str(tuple(t.shape)).encode("ascii"))
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def load_text_encoder(
    model: str = DEFAULT_MODEL, pretrained: str = DEFAULT_PRETRAINED, device: str = "cpu"
) -> TextEncoder:
    """Build a frozen text encoder through the one loading path (:mod:`descgen.encoders`).

    ``model``: an open_clip model name, a ViCLIP name (``viclip-b16``), a shipped config name
    (``clip-tiny``, ``viclip-tiny``) or a model-config JSON path.
    ``pretrained``: an open_clip tag (e.g. ``openai``), a local checkpoint file, or ``none`` for
    random weights (seeded, so the same config always gives the same weights and fingerprint).
    A tag whose weights are not cached locally fails at once when the hub cannot be reached.
    """
    from descgen.encoders import load_text_tower, resolve_encoder, tokenizer_for

    spec = resolve_encoder(model, pretrained)
    if spec.random_weights:
        warnings.warn(
            f"RANDOM WEIGHTS: {spec.name} is built with random (seeded) weights; its embeddings are "
            "only useful for tests and benchmarks",
            RandomWeightsWarning,
            stacklevel=2,
        )
    built = load_text_tower(spec, device=device)
    return TextEncoder.from_model(
        built, tokenizer_for(spec), spec.name, spec.pretrained, random_weights=spec.random_weights
    )


# ---------------------------------------------------------------------- the forward pass


def _text_tower(model: Any) -> tuple[Any, bool] | None:
    """(module holding the text parts, supports the cut) -- None when the cut cannot be applied."""
    tower = model.text if hasattr(model, "text") and hasattr(model.text, "token_embedding") else model
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    if not all(hasattr(tower, n) for n in needed):
        return None
    if getattr(tower, "attn_mask", None) is None:  # not causal: padding changes the result
        return None
    if getattr(tower, "cls_emb", None) is not None or getattr(tower, "use_pad_mask", False):
        return None
    pool = getattr(tower, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
    if pool not in ("argmax", "eos"):
        return None
    return tower, True


def _pool_positions(model: Any, tower: Any, tokens: torch.Tensor) -> torch.Tensor:
    pool = getattr(tower, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
    if pool == "eos":
        eos = getattr(tower, "eos_id", None) or getattr(model, "text_eos_id", None)
        return (tokens == eos).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def encode_tokens(model: Any, tokens: torch.Tensor, cut: bool = True) -> torch.Tensor:
    """Text features of a token batch; with ``cut``, the context is cut after the last end token."""
    import torch
    from open_clip.transformer import text_global_pool

    if getattr(model, "cuts_itself", False):  # ViCLIP's text tower
        return model.encode_text(tokens, cut=cut)
    parts = _text_tower(model) if cut else None
    if parts is None:
        return model.encode_text(tokens)
    tower, _ = parts
    eot = _pool_positions(model, tower, tokens)
    length = int(eot.max().item()) + 1
    tok = tokens[:, :length]
    cast = (
        tower.transformer.get_cast_dtype() if hasattr(tower.transformer, "get_cast_dtype") else torch.float32
    )
    x = tower.token_embedding(tok).to(cast)
    x = x + tower.positional_embedding[:length].to(cast)
    x = tower.transformer(x, attn_mask=tower.attn_mask[:length, :length])
    x = tower.ln_final(x)
    pool = getattr(tower, "pool_type", None) or getattr(model, "text_pool_type", "argmax")
    eos = getattr(tower, "eos_id", None) or getattr(model, "text_eos_id", None)
    x = text_global_pool(x, tok, pool, eos_token_id=eos)
    proj = tower.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x


def encode_texts(
    encoder: TextEncoder,
    texts: Sequence[str],
    batch_size: int = 256,
    cut: bool = True,
    on_batch: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Encode texts with the frozen text tower: a float32 tensor [n, D], not normalised, input order.

    Texts are batched by token length (so the cut removes as much padding as possible) and the
    result is put back in the input order.
    """
    import torch

    n = len(texts)
    if n == 0:
        return torch.zeros((0, encoder.dim), dtype=torch.float32)
    tokens = encoder.tokenizer(list(texts))
    lengths = (tokens != 0).sum(dim=-1)
    order = torch.argsort(lengths, stable=True)
    out = torch.empty((n, encoder.dim), dtype=torch.float32)
    was_training = encoder.model.training
    encoder.model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                batch = tokens[idx].to(encoder.device)
                feats = encode_tokens(encoder.model, batch, cut=cut)
                out[idx] = feats.to("cpu", torch.float32)
                if on_batch is not None:
                    on_batch(len(idx))
    finally:
        encoder.model.train(was_training)
    return out


# ---------------------------------------------------------------------- the cache


def encode_missing(
    store: Store,
    encoder: TextEncoder,
    set_ids: Iterable[str] | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> int:
    """Encode every description (of the given sets, or all) that has no embedding for this encoder.

    Each batch is committed on its own, so a killed run loses at most one batch and a new run
    continues with what is left. Returns the number of texts encoded.
    """
    import torch

    ids = list(set_ids) if set_ids is not None else None
    todo = store.texts_missing_embeddings(encoder.fingerprint, ids)
    if not todo and store.get_encoder(encoder.fingerprint) is not None:
        return 0  # nothing to write: a read-only cache that has everything works
    encoder.register(store)
    if not todo:
        return 0
    # Sort by token length so that each committed batch is cut as short as possible.
    counted = [(encoder.count_tokens(text), h, text) for h, text in todo]
    counted.sort(key=lambda r: (r[0], r[1]))
    bar, task = _progress(progress, len(counted), f"encoding with {encoder.fingerprint}")
    done = 0
    try:
        for start in range(0, len(counted), batch_size):
            chunk = counted[start : start + batch_size]
            vecs = encode_texts(encoder, [c[2] for c in chunk], batch_size=batch_size)
            vecs = vecs.to(torch.float32).contiguous()
            rows = [
                {
                    "text_hash": h,
                    "vector": vecs[i].numpy().tobytes(),
                    "dim": int(vecs.shape[1]),
                    "dtype": "float32",
                    "n_tokens": n_tok,
                    "truncated": n_tok > encoder.context_length,
                }
                for i, (n_tok, h, _text) in enumerate(chunk)
            ]
            store.put_embeddings(encoder.fingerprint, rows)
            done += len(chunk)
            if bar is not None:
                bar.update(task, advance=len(chunk))
    finally:
        if bar is not None:
            bar.stop()
    return done


def _progress(enabled: bool, total: int, label: str):
    if not enabled:
        return None, None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    )
    bar.start()
    task = bar.add_task(label, total=total)
    return bar, task


def vector_from_row(row: dict) -> list[float]:
    """Decode an embeddings row's BLOB (float32) into a list of floats."""
    import array

    if row.get("dtype", "float32") != "float32":
        raise DescgenDataError(f"unsupported embedding dtype {row.get('dtype')!r}")
    arr = array.array("f")
    arr.frombytes(row["vector"])
    return arr.tolist()


# ---------------------------------------------------------------------- set selection and loading


def set_coverage(
    store: Store, set_: DescriptionSet, class_names: Iterable[str] | None = None
) -> dict[str, Any]:
    """How complete a set is for some classes: classes with N descriptions of each of its kinds."""
    descs = store.descriptions(set_.id)
    names = list(class_names) if class_names is not None else sorted(descs)
    kinds = set_kinds(set_)
    complete = [c for c in names if all(len(descs.get(c, {}).get(k, [])) == set_.n for k in kinds)]
    return {"classes": len(names), "complete": len(complete), "complete_names": complete}


def set_kinds(set_: DescriptionSet) -> tuple[str, ...]:
    """The kinds a set is meant to hold (an imported spatial-only file holds only spatial)."""
    kinds = set_.params.get("kinds") if isinstance(set_.params, dict) else None
    if isinstance(kinds, list) and kinds and all(k in KINDS for k in kinds):
        return tuple(k for k in KINDS if k in kinds)
    return KINDS


def _describe_sets(store: Store, sets: Sequence[DescriptionSet], class_names: Sequence[str] | None) -> str:
    lines = []
    for s in sets:
        cov = set_coverage(store, s, class_names)
        lines.append(f"  {s.label} [{s.dataset}]: {cov['complete']}/{cov['classes']} classes complete")
    return "\n".join(lines)


def select_set(
    store: Store,
    dataset: str | None = None,
    set_id: str | None = None,
    class_names: Sequence[str] | None = None,
    backend: str | None = None,
    model: str | None = None,
    prompt: str | None = None,
) -> DescriptionSet:
    """Pick one description set.

    With ``set_id`` (a prefix is enough) that set; otherwise the sets of ``dataset`` matching the
    filters. With ``class_names``, only sets that are complete for all of them count. Exactly one
    candidate must remain; otherwise the error lists the candidates.
    """
    if set_id:
        found = [s for s in store.find_sets(set_id) if dataset is None or s.dataset == dataset]
        if len(found) == 1:
            return found[0]
        others = store.list_sets(dataset=dataset)
        where = f" of dataset {dataset!r}" if dataset else ""
        if not found:
            listing = _describe_sets(store, others, None) if others else "  (none)"
            raise SetSelectionError(
                f"no description set{where} has an id starting with {set_id!r}; sets:\n{listing}"
            )
        raise SetSelectionError(
            f"set id prefix {set_id!r} is ambiguous; matching sets:\n{_describe_sets(store, found, None)}"
        )
    cands = store.list_sets(dataset=dataset, backend=backend, model=model, prompt_fp_prefix=prompt)
    where = f" for dataset {dataset!r}" if dataset else ""
    if not cands:
        every = store.list_sets(dataset=dataset) if dataset else store.list_sets()
        listing = _describe_sets(store, every, None) if every else "  (none)"
        raise SetSelectionError(f"no description set{where} matches; sets in {store.path}:\n{listing}")
    if class_names is not None:
        names = list(class_names)
        complete = [s for s in cands if set_coverage(store, s, names)["complete"] == len(names)]
        if len(complete) == 1:
            return complete[0]
        if not complete:
            raise SetSelectionError(
                f"no description set{where} is complete for the {len(names)} classes; candidates:\n"
                f"{_describe_sets(store, cands, names)}"
            )
        raise SetSelectionError(
            f"{len(complete)} description sets{where} are complete; choose one with --set ID:\n"
            f"{_describe_sets(store, complete, names)}"
        )
    if len(cands) == 1:
        return cands[0]
    raise SetSelectionError(
        f"{len(cands)} description sets{where}; choose one with --set ID:\n{_describe_sets(store, cands, None)}"
    )


def load_description_embeddings(
    store: Store, set_id: str, class_names: Sequence[str], encoder_fp: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spatial and temporal embeddings [C, N, D] (float32, not normalised) in ``class_names`` order.

    Raises :class:`MissingDescriptionsError` naming every class that lacks N descriptions of a
    kind or an embedding of one of them for ``encoder_fp``.
    """
    import numpy as np
    import torch

    set_ = store.get_set(set_id)
    if set_ is None:
        raise SetSelectionError(f"description set {set_id!r} not found in {store.path}")
    if store.get_encoder(encoder_fp) is None:
        known = ", ".join(e["fingerprint"] for e in store.list_encoders()) or "none"
        raise MissingDescriptionsError(
            f"no embeddings for encoder {encoder_fp} in {store.path} (encoders there: {known}); "
            f"run: descgen encode --cache {store.path} --set {set_.id} with the same model and weights",
            list(class_names),
        )
    descs = store.descriptions(set_.id, class_names)
    problems: dict[str, list[str]] = {}
    hashes: list[str] = []
    for c in class_names:
        for kind in KINDS:
            texts = descs.get(c, {}).get(kind, [])
            if len(texts) != set_.n:
                problems.setdefault(c, []).append(f"{len(texts)} {kind} descriptions (expected {set_.n})")
            hashes.extend(text_hash(t) for t in texts)
    emb = store.get_embeddings(encoder_fp, hashes)
    for c in class_names:
        missing = sum(1 for kind in KINDS for t in descs.get(c, {}).get(kind, []) if text_hash(t) not in emb)
        if missing:
            problems.setdefault(c, []).append(f"{missing} descriptions without embeddings")
    if problems:
        names = list(problems)
        shown = "; ".join(f"{c}: {', '.join(p)}" for c, p in list(problems.items())[:10])
        more = f" (and {len(names) - 10} more)" if len(names) > 10 else ""
        raise MissingDescriptionsError(
            f"{len(names)} of {len(class_names)} classes lack descriptions or embeddings in set {set_.id} "
            f"for encoder {encoder_fp}: {shown}{more}",
            names,
        )
    dim = next(iter(emb.values()))["dim"] if emb else 0
    out = []
    for kind in KINDS:
        arr = np.empty((len(class_names), set_.n, dim), dtype=np.float32)
        for ci, c in enumerate(class_names):
            for j, t in enumerate(descs[c][kind]):
                row = emb[text_hash(t)]
                arr[ci, j] = np.frombuffer(row["vector"], dtype=np.float32)
        out.append(torch.from_numpy(arr))
    return out[0], out[1]
