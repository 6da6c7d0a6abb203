"""Commands over the cache: encode, audit, show, usage, export, import.

Each command is a thin layer over a function of descgen.encode, descgen.audit, descgen.report or
descgen.transfer. They raise user errors; ``descgen.cli`` registers the commands (``COMMANDS``)
and turns those errors into one line on stderr.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import typer

from descgen.cli_options import CacheOpt, ClassesOpt, DataDirOpt
from descgen.datasets import ClassListError
from descgen.errors import DescgenError

SetOpt = typer.Option(None, "--set", help="Description set id (a unique prefix is enough).")


def _open(cache: str, write: bool = False, create: bool = False):
    """Reading commands open the cache read-only; writing ones for writing (``create``: may be new)."""
    from descgen.store import Store, StoreError

    if not write:
        return Store(cache, readonly=True)
    if not create and not Path(cache).exists():
        raise StoreError(f"cache file not found: {cache}")
    return Store(cache)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _class_list(dataset: str, classes: str | None, data_dir: str | None, required: bool):
    """(names, source) of the dataset's class list, or (None, 'cache') when it cannot be found."""
    from descgen.datasets import load_class_list

    try:
        cl = load_class_list(dataset=dataset, classes_file=classes, data_dir=data_dir)
        return cl.names, cl.source
    except ClassListError as exc:
        if required or classes is not None or data_dir is not None:
            raise
        _console(stderr=True).print(
            f"[yellow]warning:[/] {exc}; checking only the classes present in the cache"
        )
        return None, "cache (class list not found)"


# ---------------------------------------------------------------------- encode


def encode_cmd(
    cache: str = CacheOpt,
    dataset: str = typer.Option(None, "--dataset", help="Only the sets of this dataset."),
    set_id: str = SetOpt,
    model: str = typer.Option(
        "ViT-B-16",
        "--model",
        help="open_clip model name, ViCLIP name (viclip-b16, viclip-l14), shipped config (clip-tiny, "
        "viclip-tiny) or model-config JSON path.",
    ),
    pretrained: str = typer.Option(
        "openai", "--pretrained", help="Pretrained tag, checkpoint file, or 'none' (random)."
    ),
    batch_size: int = typer.Option(256, "--batch-size", min=1),
    device: str = typer.Option("cpu", "--device"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Encode every description that has no embedding yet for this encoder (frozen open_clip text tower)."""
    from descgen.encode import RandomWeightsWarning, encode_missing, load_text_encoder, select_set

    t0 = time.monotonic()
    store = _open(cache, write=True)
    set_ids = None
    if set_id:
        set_ids = [select_set(store, dataset=dataset, set_id=set_id).id]
    elif dataset:
        set_ids = [s.id for s in store.list_sets(dataset=dataset)]
        if not set_ids:
            raise DescgenError(f"no description sets for dataset {dataset!r} in {cache}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RandomWeightsWarning)
        encoder = load_text_encoder(model, pretrained, device=device)
    if any(issubclass(w.category, RandomWeightsWarning) for w in caught):
        _console(stderr=True).print(
            f"[bold red]WARNING: RANDOM WEIGHTS[/] - {encoder.model_name} has random weights "
            f"(fingerprint {encoder.fingerprint}); these embeddings are for tests only, not for training."
        )
    n = encode_missing(store, encoder, set_ids, batch_size=batch_size, progress=progress)
    total = len(store.all_description_texts(set_ids))
    typer.echo(
        f"encoded {n} descriptions ({total - n} already cached, {total} distinct) with {encoder.fingerprint} "
        f"in {time.monotonic() - t0:.1f}s"
    )


# ---------------------------------------------------------------------- audit


def audit_cmd(
    cache: str = CacheOpt,
    dataset: str = typer.Option(..., "--dataset", help="Dataset name in the cache."),
    set_id: str = SetOpt,
    data_dir: str = DataDirOpt,
    classes: str = ClassesOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON (stable keys)."),
    html: str = typer.Option(None, "--html", help="Also write a self-contained HTML page to this file."),
    strict: bool = typer.Option(False, "--strict", help="Exit with code 1 when there are findings."),
    near_dup_threshold: float = typer.Option(0.95, "--near-dup-threshold", min=-1.0, max=1.0),
    encoder: str = typer.Option(None, "--encoder", help="Encoder fingerprint for too_long / near_duplicate."),
) -> None:
    """Check a description set: missing, count, empty, duplicate, near_duplicate, too_long, invalid/error, leak."""
    from descgen.audit import audit_set
    from descgen.encode import select_set

    store = _open(cache)
    set_ = select_set(store, dataset=dataset, set_id=set_id)
    names, source = _class_list(dataset, classes, data_dir, required=False)
    report = audit_set(store, set_, names, source, encoder_fp=encoder, near_dup_threshold=near_dup_threshold)
    if html:
        from descgen.report import write_html

        write_html(store, report, html)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), sort_keys=True, ensure_ascii=False, indent=2) + "\n")
    else:
        _print_audit(report)
        if html:
            typer.echo(f"wrote {html}")
    if strict and report.findings:
        raise typer.Exit(1)


def _print_audit(report) -> None:
    from rich.table import Table

    con = _console()
    s = report.set
    if report.findings:
        table = Table(
            title=f"{report.dataset}: set {s.id} ({s.backend}: {s.model}, N={s.n})", show_lines=False
        )
        for col in ("class", "kind", "check", "#", "message"):
            table.add_column(col, overflow="fold")
        for f in report.findings:
            table.add_row(
                f.class_name, f.kind, f.check, "" if f.index is None else str(f.index + 1), f.message
            )
        con.print(table)
    off = [f"{k} ({v})" for k, v in sorted(report.checks.items()) if v != "on"]
    counts = ", ".join(f"{k} {v}" for k, v in report.counts().items())
    con.print(
        f"{len(report.findings)} findings in {len(report.flagged_classes())} of {len(report.classes)} classes"
        + (f" ({counts})" if counts else "")
        + f"; set {s.id}"
        + (f"; encoder {report.encoder}" if report.encoder else "")
        + (f"; not fully checked: {'; '.join(off)}" if off else ""),
        markup=False,
    )


# ---------------------------------------------------------------------- show


def show_cmd(
    cache: str = CacheOpt,
    dataset: str = typer.Option(..., "--dataset"),
    class_name: str = typer.Option(..., "--class", help="Class name, as in the class list."),
    set_id: str = SetOpt,
    as_json: bool = typer.Option(False, "--json"),
    full: bool = typer.Option(False, "--full", help="Print long prompt texts and responses in full."),
) -> None:
    """Show the whole chain for one class: prompt, requests, raw responses, sentences, embeddings."""
    from descgen.audit import class_chain
    from descgen.encode import select_set

    store = _open(cache)
    set_ = select_set(store, dataset=dataset, set_id=set_id)
    chain = class_chain(store, set_, class_name)
    if not chain["generations"] and not chain["descriptions"]:
        known = sorted(store.descriptions(set_.id))
        near = [k for k in known if class_name.casefold() in k.casefold()][:5]
        hint = f"; similar: {', '.join(near)}" if near else ""
        raise DescgenError(f"class {class_name!r} has nothing in set {set_.id}{hint}")
    if as_json:
        sys.stdout.write(json.dumps(chain, sort_keys=True, ensure_ascii=False, indent=2) + "\n")
        return
    _print_chain(chain, None if full else 40)


def _clip_lines(text: str, limit: int | None) -> str:
    lines = text.splitlines()
    if limit is None or len(lines) <= limit:
        return text
    return "\n".join(lines[:limit]) + f"\n... ({len(lines) - limit} more lines; --full shows everything)"


def _print_chain(chain: dict, limit: int | None = 40) -> None:
    from rich.panel import Panel
    from rich.text import Text

    con = _console()
    s = chain["set"]
    con.print(
        Text(
            f"{chain['dataset']} / {chain['class']}  -  set {s['id']} ({s['backend']}: {s['model']}, N={s['n']})",
            style="bold",
        )
    )
    p = chain["prompt"]
    con.print(
        Panel(
            Text(_clip_lines(p["content"] or "(prompt text not stored)", limit)),
            title=f"prompt {p['fingerprint'][:16]} {p['name'] or ''} {p['version'] or ''}",
            expand=True,
        )
    )
    for g in chain["generations"]:
        head = (
            f"generation {g['id']}: {g['status']}"
            + (f" ({g['error']})" if g["error"] else "")
            + f", attempt {g['attempt']}, seed {g['seed']}, tokens {g['prompt_tokens']}/{g['completion_tokens']}"
        )
        body = Text()
        body.append("params: " + json.dumps(g["params"], sort_keys=True) + "\n")
        if g["request"] is not None:
            req = g["request"] if isinstance(g["request"], str) else json.dumps(g["request"], sort_keys=True)
            body.append("request: " + req + "\n")
        body.append("raw response:\n" + _clip_lines(str(g["raw_response"] or "(none)"), limit))
        con.print(Panel(body, title=head, expand=True))
    for d in chain["descriptions"]:
        line = Text(f"[{d['kind']} {d['index'] + 1}] ", style="bold")
        line.append(d["text"])
        line.append(f"  (generation {d['generation_id']})", style="dim")
        con.print(line)
        if not d["embeddings"]:
            con.print(Text("    no embedding yet (descgen encode)", style="dim"))
        for e in d["embeddings"]:
            first = ", ".join(f"{v:.4f}" for v in e["first"])
            con.print(
                Text(
                    f"    {e['encoder']} ({e['pretrained']}{', RANDOM' if e['random_weights'] else ''}): dim {e['dim']} "
                    f"{e['dtype']}, norm {e['norm']:.4f}, tokens {e['n_tokens']}"
                    f"{' TRUNCATED' if e['truncated'] else ''}, first [{first}, ...]",
                    style="dim",
                )
            )


# ---------------------------------------------------------------------- usage


def _usd(x: float | None) -> str:
    return "?" if x is None else f"{x:.4f}"


def _table(title: str, cols: list[str], rows: list[list]):
    from rich.table import Table

    t = Table(title=title)
    for col in cols:
        t.add_column(col, justify="right" if col not in ("backend", "model") else "left")
    for cells in rows:
        t.add_row(*(str(c) for c in cells))
    return t


USAGE_COLUMNS = "backend|model|requests|ok|invalid|errors|input tokens|output tokens|cost $".split("|")
BATCH_COLUMNS = "backend|model|requests|input tokens|output tokens|batch $|online $|saving $".split("|")


def _usage_table(rep: dict):
    """Requests, tokens and the estimated cost (batch answers at the batch price) per backend and model."""
    rows = [
        [r["backend"], r["model"], r["requests"], r["ok"], r["invalid"], r["errors"]]
        + [r["prompt_tokens"], r["completion_tokens"], _usd(r["cost_usd"])]
        for r in rep["models"]
    ]
    return _table("Usage per backend and model", USAGE_COLUMNS, rows)


def _batch_row(r: dict) -> list:
    cost, saving = r["batch_cost_usd"], r["batch_saving_usd"]
    online = None if cost is None else cost + saving
    tokens = [r["batch_prompt_tokens"], r["batch_completion_tokens"]]
    return [r["backend"], r["model"], r["batch_requests"], *tokens, _usd(cost), _usd(online), _usd(saving)]


def _batch_table(rep: dict):
    """The answers that came through a batch: their tokens, and their cost at the batch and online price."""
    rows = [_batch_row(r) for r in rep["models"] if r["batch_requests"]]
    return _table(f"Answers through a batch (batch price x{rep['batch_discount']:g})", BATCH_COLUMNS, rows)


def _usage_summary(rep: dict) -> str:
    """The last line: requests, the estimated cost, and with batches the online cost and the saving."""
    unpriced = "" if rep["cost_complete"] else " + ? (models without a price)"
    requests = sum(r["requests"] for r in rep["models"])
    line = f"{requests} requests; estimated cost ${rep['total_cost_usd']:.4f}{unpriced}"
    if rep["batch_requests"]:
        line += (
            f" ({rep['batch_requests']} through a batch at batch price x{rep['batch_discount']:g}; "
            f"online ${rep['total_online_cost_usd']:.4f}, batch saving ${rep['total_batch_saving_usd']:.4f})"
        )
    return line


def usage_cmd(
    cache: str = CacheOpt,
    as_json: bool = typer.Option(False, "--json"),
    pricing: str = typer.Option(None, "--pricing", help="Price table (TOML) instead of the packaged one."),
) -> None:
    """Requests, tokens and estimated cost per backend and model, and failures by reason.

    Answers that came through a batch are priced at the batch price (``batch_discount`` in the price table).
    """
    from descgen.audit import usage_report

    with _open(cache) as store:
        rep = usage_report(store, pricing)
    if as_json:
        sys.stdout.write(json.dumps(rep, sort_keys=True, ensure_ascii=False, indent=2) + "\n")
        return
    from rich.table import Table

    con = _console()
    con.print(_usage_table(rep))
    if rep["batch_requests"]:
        con.print(_batch_table(rep))
    if rep["failures"]:
        f = Table(title="Failures by reason")
        for col in ("backend", "model", "status", "reason", "count"):
            f.add_column(col, overflow="fold")
        for r in rep["failures"]:
            f.add_row(r["backend"], r["model"], r["status"], r["reason"], str(r["count"]))
        con.print(f)
    con.print(_usage_summary(rep), markup=False)


# ---------------------------------------------------------------------- export / import


def export_cmd(
    cache: str = CacheOpt,
    dataset: str = typer.Option(..., "--dataset"),
    out: str = typer.Option(..., "--out", help="Output JSON file (a directory with --format msta)."),
    set_id: str = SetOpt,
    fmt: str = typer.Option(
        "json", "--format", help="json (one document) or msta (the authors' index-keyed files)."
    ),
    data_dir: str = DataDirOpt,
    classes: str = ClassesOpt,
) -> None:
    """Write a description set as JSON, or in the MSTA authors' layout."""
    from descgen.transfer import export_set

    store = _open(cache)
    paths = export_set(store, dataset, out, set_id=set_id, fmt=fmt, data_dir=data_dir, classes_file=classes)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def import_cmd(
    cache: str = CacheOpt,
    dataset: str = typer.Option(..., "--dataset"),
    spatial: str = typer.Option(
        ..., "--spatial", help="Spatial descriptions (name- or index-keyed JSON), or an export."
    ),
    temporal: str = typer.Option(
        None, "--temporal", help="Temporal descriptions (name- or index-keyed JSON)."
    ),
    data_dir: str = DataDirOpt,
    classes: str = ClassesOpt,
) -> None:
    """Import published description files as a set (backend 'import'), defects included, for audit and training."""
    from descgen.transfer import import_files

    existed = Path(cache).exists()
    store = None
    try:
        store = _open(cache, write=True, create=True)
        res = import_files(store, dataset, spatial, temporal, data_dir=data_dir, classes_file=classes)
    except Exception:
        if store is not None and not existed:  # leave no empty cache file behind
            store.close()
            for suffix in ("", "-wal", "-shm"):
                Path(cache + suffix).unlink(missing_ok=True)
        raise
    miss = f"; {len(res.missing)} classes of the list not in the files" if res.missing else ""
    typer.echo(
        f"set {res.set.id} ({res.set.model}, N={res.n}): {res.added} classes imported, {res.cached} already there"
        f"{miss}"
    )


# The commands of this module by name (registered by descgen.cli).
COMMANDS = {
    "encode": encode_cmd,
    "audit": audit_cmd,
    "show": show_cmd,
    "usage": usage_cmd,
    "export": export_cmd,
    "import": import_cmd,
}
