"""Class weights for scoring videos: the class names alone, or ensembles with the descriptions.

``names``         the class-prompt embedding of each class (the template applied to its name).
``descriptions``  each class weight is the normalised mean of the unit-length class-prompt embedding
                  and the unit-length embeddings of the class's spatial and temporal descriptions
                  (an ensemble of text views, as in CuPL and WaffleCLIP):

                      w_c = normalise( (p_c + sum_i s_ci + sum_i t_ci) / (1 + 2N) ),  all unit length

The description embeddings come from the model's own frozen text encoder through descgen's API:
those a description set lacks for that encoder are encoded and stored in the cache first (as
``msta train`` does), so the next evaluation reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from msta.run import TrainError

CLASSIFIERS = ("names", "descriptions")


@dataclass
class ClassifierSpec:
    """How to build the class weights: ``kind`` (names or descriptions), the description cache and
    set (a prefix of its id is enough; None: the one set that covers the classes)."""

    kind: str = "names"
    descriptions: str | None = None
    set_id: str | None = None

    def check(self) -> None:
        if self.kind not in CLASSIFIERS:
            raise TrainError(f"--classifier must be one of {', '.join(CLASSIFIERS)}, not {self.kind!r}")
        if self.kind == "descriptions" and not self.descriptions:
            raise TrainError("--classifier descriptions needs --descriptions CACHE.db")
        if self.kind == "names" and self.set_id:
            raise TrainError("--set-id selects descriptions: use it with --classifier descriptions")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "descriptions": self.descriptions, "set": self.set_id}


def ensemble_weights(prompt, spatial, temporal):
    """``[C, D]`` unit class weights from prompt ``[C, D]`` and description ``[C, N, D]`` embeddings."""
    import torch
    import torch.nn.functional as F

    views = torch.cat(
        [F.normalize(prompt.float(), dim=-1).unsqueeze(1), F.normalize(spatial.float(), dim=-1)], dim=1
    )
    views = torch.cat([views, F.normalize(temporal.float(), dim=-1)], dim=1)
    return F.normalize(views.mean(dim=1), dim=-1)


def description_embeddings(model, names: Sequence[str], cache: str, choose, encode: bool = True, log=None):
    """Spatial and temporal ``[C, N, D]`` embeddings of ``names`` from the model's own frozen text
    encoder, from the set ``choose(store)`` picks in the cache, and a dict naming the set and
    encoder. With ``encode``, embeddings the set lacks are encoded and stored first (a cache that
    has them all is only read); ``log`` hears how many. Problems are :class:`TrainError`."""
    from descgen.encode import (
        DescgenDataError,
        MissingDescriptionsError,
        TextEncoder,
        load_description_embeddings,
    )

    store = open_store(cache)
    try:
        set_ = choose(store)
        frozen = model.frozen_text_backbone()
        encoder = TextEncoder.from_model(frozen.model, model.tokenizer, frozen.model_name, frozen.pretrained)
        if encode:
            _store_missing(store, encoder, set_.id, cache, log)
        spatial, temporal = load_description_embeddings(store, set_.id, list(names), encoder.fingerprint)
    except MissingDescriptionsError as exc:
        raise TrainError(f"{exc} (classes: {', '.join(exc.classes)})") from None
    except DescgenDataError as exc:
        raise TrainError(str(exc)) from None
    finally:
        store.close()
    return (
        spatial,
        temporal,
        {"set": set_.id, "encoder": encoder.fingerprint, "cache": str(cache), "n": set_.n},
    )


def _store_missing(store, encoder, set_id: str, cache: str, log) -> None:
    from descgen.encode import encode_missing
    from descgen.store import StoreError

    try:
        n = encode_missing(store, encoder, set_ids=[set_id], progress=False)
    except StoreError as exc:
        raise TrainError(
            f"description embeddings for {encoder.fingerprint} are missing from {cache} and cannot be "
            f"stored: {exc}"
        ) from None
    if n and log is not None:
        log(f"encoded {n} descriptions with {encoder.fingerprint} and stored them in {cache}")


def choose_set(store, names: Sequence[str], set_id: str | None):
    """The set ``set_id`` names (a prefix is enough), else the one set that covers ``names``."""
    from descgen.encode import DescgenDataError, select_set

    try:
        return select_set(store, set_id=set_id) if set_id else select_set(store, class_names=list(names))
    except DescgenDataError as exc:
        raise TrainError(str(exc).replace("with --set ID", "with --set-id ID")) from None


def open_store(path: str, writable: bool = True):
    from pathlib import Path

    from descgen.store import Store, StoreError

    if not Path(path).expanduser().is_file():
        raise TrainError(f"description cache not found: {path}")
    try:
        return Store(Path(path).expanduser(), create=False, readonly=not writable)
    except StoreError as exc:
        raise TrainError(str(exc)) from None


def class_weights(model, names: Sequence[str], spec: ClassifierSpec | None = None):
    """``[C, D]`` class weights for ``names`` (no gradient), and a dict describing them."""
    import torch

    spec = spec or ClassifierSpec()
    spec.check()
    with torch.no_grad():
        prompt = model.encode_class_prompts(list(names))
        if spec.kind == "names":
            return prompt, {"kind": "names"}
        assert spec.descriptions is not None
        spatial, temporal, info = description_embeddings(
            model, names, spec.descriptions, lambda store: choose_set(store, names, spec.set_id)
        )
        dev = prompt.device
        weights = ensemble_weights(prompt, spatial.to(dev), temporal.to(dev))
    return weights, {"kind": "descriptions", **info}
