"""Export description sets to JSON, and import published description files into the cache.

Import accepts, for each kind, a JSON object keyed by class name (``{"abseiling": [...]}``) or by
class index as a string (``{"0": [...]}``, the layout of the MSTA authors' files), or a document
written by :func:`export_set` (which holds both kinds). Names are checked against the dataset's
class list before anything is written. The descriptions are stored exactly as they are, defects
included, so that the audit can report them.

An imported set has backend ``import``, model = the file name(s), and prompt = the file content:
its fingerprint is the sha256 of the stored text (for one file, of the file's bytes), and the text
is stored as the prompt row, so the provenance chain leads back to the file.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descgen.datasets import ClassList, ClassListError, load_class_list
from descgen.encode import DescgenDataError, select_set
from descgen.errors import DescgenError
from descgen.fileio import write_text_atomic
from descgen.store import KINDS, DescriptionSet, Store, canonical_json

IMPORT_BACKEND = "import"
EXPORT_FORMATS = ("json", "msta")


class TransferError(DescgenDataError, DescgenError):
    """A description file cannot be imported or a set cannot be exported. Message is for the user."""


@dataclass
class ImportResult:
    set: DescriptionSet
    classes: int  # classes in the files
    added: int  # classes written by this run
    cached: int  # classes that were already there
    missing: list[str]  # classes of the list that the files do not cover
    n: int


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def _read_json(path: Path) -> tuple[str, Any]:
    if not path.is_file():
        raise TransferError(f"description file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise TransferError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise TransferError(f"{path} is not UTF-8 text (byte {exc.start})") from None
    try:
        return text, json.loads(text)
    except json.JSONDecodeError as exc:
        raise TransferError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None


def _is_export_doc(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("classes"), list) and "dataset" in obj


def _map_entries(path: Path, obj: Any, classes: ClassList) -> dict[str, list[str]]:
    """{canonical class name: [text...]} from a name- or index-keyed object."""
    if not isinstance(obj, dict) or not obj:
        raise TransferError(
            f"{path}: expected a JSON object mapping class name or index to a list of strings"
        )
    by_norm = {_norm(n): n for n in classes.names}
    all_index = all(re.fullmatch(r"\d+", str(k).strip()) for k in obj)
    out: dict[str, list[str]] = {}
    unknown: list[str] = []
    for key, value in obj.items():
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TransferError(f"{path}: entry {key!r} is not a list of strings")
        if all_index:
            idx = int(str(key).strip())
            if idx >= len(classes.names):
                raise TransferError(
                    f"{path}: class index {idx} is out of range for {classes.name} ({len(classes.names)} classes)"
                )
            name = classes.names[idx]
        else:
            name = by_norm.get(_norm(str(key)))
            if name is None:
                unknown.append(str(key))
                continue
        if name in out:
            raise TransferError(f"{path}: class {name!r} appears twice")
        out[name] = list(value)
    if unknown:
        shown = ", ".join(repr(u) for u in unknown[:5]) + (
            f" (and {len(unknown) - 5} more)" if len(unknown) > 5 else ""
        )
        raise TransferError(
            f"{path}: {len(unknown)} class names are not in the class list of {classes.name} "
            f"({classes.source}): {shown}"
        )
    return out


def _export_doc_entries(path: Path, obj: dict, classes: ClassList) -> dict[str, dict[str, list[str]]]:
    kinds: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
    for i, entry in enumerate(obj["classes"]):
        if not isinstance(entry, dict) or "name" not in entry:
            raise TransferError(f"{path}: classes[{i}] has no name")
        for kind in KINDS:
            if kind in entry:
                kinds[kind][str(entry["name"])] = entry[kind]
    return {k: _map_entries(path, v, classes) for k, v in kinds.items() if v}


@dataclass
class _Files:
    """What the description files hold: {kind: {class name: [text...]}} and their provenance."""

    per_kind: dict[str, dict[str, list[str]]]
    paths: dict[str, Path]
    content: str  # the text stored as the set's prompt
    model: str  # the file name(s)


def _read_files(spatial: str | Path, temporal: str | Path | None, classes: ClassList) -> _Files:
    sp = Path(spatial).expanduser()
    sp_text, sp_obj = _read_json(sp)
    if _is_export_doc(sp_obj):
        if temporal is not None:
            raise TransferError(f"{sp} is an export document that holds both kinds; do not pass --temporal")
        per_kind = _export_doc_entries(sp, sp_obj, classes)
        return _Files(per_kind, {k: sp for k in per_kind}, sp_text, sp.name)
    files = _Files({"spatial": _map_entries(sp, sp_obj, classes)}, {"spatial": sp}, sp_text, sp.name)
    if temporal is not None:
        tp = Path(temporal).expanduser()
        tp_text, tp_obj = _read_json(tp)
        if _is_export_doc(tp_obj):
            raise TransferError(f"{tp} is an export document; pass it alone with --spatial")
        files.per_kind["temporal"] = _map_entries(tp, tp_obj, classes)
        files.paths["temporal"] = tp
        files.content = f"=== spatial: {sp.name} ===\n{sp_text}\n=== temporal: {tp.name} ===\n{tp_text}"
        files.model = f"{sp.name} + {tp.name}"
    return files


def import_files(
    store: Store,
    dataset: str,
    spatial: str | Path,
    temporal: str | Path | None = None,
    data_dir: str | Path | None = None,
    classes_file: str | Path | None = None,
) -> ImportResult:
    """Import published description files as one set (idempotent: a second run adds nothing)."""
    try:
        classes = load_class_list(dataset=dataset, classes_file=classes_file, data_dir=data_dir)
    except ClassListError as exc:
        raise TransferError(str(exc)) from None
    files = _read_files(spatial, temporal, classes)
    kinds = [k for k in KINDS if k in files.per_kind]
    counts = Counter(len(v) for k in kinds for v in files.per_kind[k].values())
    if not counts:
        raise TransferError(f"{Path(spatial).expanduser()}: no descriptions found")
    n = max(counts.items(), key=lambda kv: (kv[1], kv[0]))[0]
    names_in_files = [c for c in classes.names if any(c in files.per_kind[k] for k in kinds)]
    missing = [c for c in classes.names if c not in names_in_files]
    with store.transaction():
        set_, added = _store_files(store, classes, files, kinds, n, names_in_files)
    return ImportResult(
        set=set_,
        classes=len(names_in_files),
        added=added,
        cached=len(names_in_files) - added,
        missing=missing,
        n=n,
    )


def _store_files(
    store: Store, classes: ClassList, files: _Files, kinds: list[str], n: int, names: list[str]
) -> tuple[DescriptionSet, int]:
    """Write the set and the classes it does not have yet; returns the set and how many were added."""
    fp = hashlib.sha256(files.content.encode("utf-8")).hexdigest()
    store.ensure_prompt(fp, f"import:{files.model}", "file", files.content)
    set_ = store.ensure_set(
        dataset=classes.name,
        prompt_fp=fp,
        backend=IMPORT_BACKEND,
        model=files.model,
        params={"kinds": kinds, "files": {k: files.paths[k].name for k in kinds}},
        n=n,
        source=str(files.paths[kinds[0]]),
    )
    done = store.completed_classes(set_.id)
    request = canonical_json({"import": {k: str(files.paths[k]) for k in kinds}})
    added = 0
    for name in names:
        if name in done:
            continue
        entry = {k: files.per_kind[k][name] for k in kinds if name in files.per_kind[k]}
        store.record_success(
            set_,
            name,
            spatial=files.per_kind.get("spatial", {}).get(name, []),
            temporal=files.per_kind.get("temporal", {}).get(name, []),
            class_id=classes.names.index(name),
            request=request,
            raw_response=json.dumps(entry, ensure_ascii=False),
            attempt=1,
        )
        added += 1
    return set_, added


# ---------------------------------------------------------------------- export


def _class_ids(
    store: Store,
    set_: DescriptionSet,
    data_dir: str | Path | None,
    classes_file: str | Path | None,
    names: list[str],
) -> dict[str, int]:
    """Class index of each name: from the dataset's class list when it loads, else from the cache."""
    try:
        cl = load_class_list(
            dataset=set_.dataset if classes_file is None else set_.dataset,
            classes_file=classes_file,
            data_dir=data_dir,
        )
        index = {n: i for i, n in enumerate(cl.names)}
        if all(n in index for n in names):
            return {n: index[n] for n in names}
    except ClassListError:
        if classes_file is not None:
            raise
    ids: dict[str, int] = {}
    for g in store.generations(set_.id, status="ok"):
        if g.get("class_id") is not None:
            ids[g["class_name"]] = int(g["class_id"])
    if all(n in ids for n in names) and len(set(ids[n] for n in names)) == len(names):
        return {n: ids[n] for n in names}
    return {n: i for i, n in enumerate(sorted(names))}


def export_set(
    store: Store,
    dataset: str,
    out: str | Path,
    set_id: str | None = None,
    fmt: str = "json",
    data_dir: str | Path | None = None,
    classes_file: str | Path | None = None,
) -> list[Path]:
    """Write a set as one JSON document (``json``) or as the authors' two index-keyed files (``msta``)."""
    if fmt not in EXPORT_FORMATS:
        raise TransferError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    set_ = select_set(store, dataset=dataset, set_id=set_id)
    descs = store.descriptions(set_.id)
    names = list(descs)
    try:
        ids = _class_ids(store, set_, data_dir, classes_file, names)
    except ClassListError as exc:
        raise TransferError(str(exc)) from None
    ordered = sorted(names, key=lambda n: ids[n])
    out = Path(out).expanduser()
    if fmt == "json":
        prompt = store.get_prompt(set_.prompt_fp) or {}
        doc = {
            "dataset": set_.dataset,
            "prompt": set_.prompt_fp,
            "prompt_name": prompt.get("name"),
            "model": set_.model,
            "backend": set_.backend,
            "set": set_.id,
            "n": set_.n,
            "params": set_.params,
            "classes": [
                {"id": ids[n], "name": n, "spatial": descs[n]["spatial"], "temporal": descs[n]["temporal"]}
                for n in ordered
            ],
        }
        _write(out, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        return [out]
    if out.exists() and not out.is_dir():
        raise TransferError(f"--format msta writes two files into a directory; {out} is a file")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TransferError(f"cannot create the directory {out}: {exc.strerror or exc}") from None
    written = []
    for kind, letter in (("spatial", "s"), ("temporal", "t")):
        entries = {str(ids[n]): descs[n][kind] for n in ordered if descs[n][kind]}
        if not entries:
            continue
        path = out / f"{set_.n}_{letter}_description_{set_.dataset}.json"
        _write(path, json.dumps(entries, ensure_ascii=False, indent=2) + "\n")
        written.append(path)
    return written


def _write(path: Path, text: str) -> None:
    write_text_atomic(path, text)
