"""Description sets judged by their effect: zero-shot accuracy of each set's classifier, side by side.

For every description set the frozen backbone (adapters off) scores a labelled video list with the
ensemble class weights of :mod:`msta.classifier` (``--classifier descriptions``); the class names
alone are the baseline. The videos are encoded once; each classifier is one matrix product. Next to
the accuracy stand what the set cost (tokens of its generations, priced by descgen's price table)
and what descgen's audit finds in it. :func:`render_markdown` and :func:`render_html` show the
result; :func:`write_outputs` writes it as Markdown, JSON and HTML.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from descgen.fileio import OutputPathError, write_text_atomic
from msta.classifier import ClassifierSpec, choose_set, class_weights, open_store
from msta.config import load_config
from msta.evaluate import prediction_rows, summarize, view_scores
from msta.run import (
    TrainError,
    autocast,
    build_seeded_model,
    check_labels,
    class_names,
    make_dataset,
    pick_device,
    read_list,
)
from msta.transforms import batch_video
from msta.views import parse_views

BASELINE = "names"


def compare(
    cache: str,
    set_ids: Sequence[str],
    val_list: str,
    root: str,
    configs: Sequence[str] = (),
    overrides: Sequence[str] = (),
    classes: str | None = None,
    views: str = "1x1",
    pricing: str | None = None,
) -> dict[str, Any]:
    """The comparison of ``set_ids`` (id prefixes) on ``val_list`` (videos under ``root``)."""
    if not set_ids:
        raise TrainError("name at least one description set to compare")
    set_ids = resolve_sets(cache, set_ids)  # before any video is read
    cfg = load_config(configs, [*overrides, "adapter.branches=none"])
    names = class_names(classes or cfg.data.classes, cfg)
    items = read_list(val_list, cfg, "video list")
    check_labels(items, len(names), f"video list {val_list}")
    device = pick_device(cfg.run.device)
    model = build_seeded_model(cfg).to(device).eval()
    feats, labels = video_features(model, cfg, items, root, parse_views(views), device)
    precision = cfg.run.precision
    results: dict[str, Any] = {BASELINE: _score(model, feats, labels, names, ClassifierSpec(), precision)}
    for sid in set_ids:
        spec = ClassifierSpec("descriptions", cache, sid)
        res = _score(model, feats, labels, names, spec, precision)
        results[res["classifier"]["set"]] = res
    sets = list(set_ids)
    details = set_details(cache, sets, names, results[sets[0]]["classifier"]["encoder"], pricing)
    rows = per_class_table(names, results, sets)
    return {
        "cache": str(cache),
        "val_list": str(val_list),
        "root": str(root),
        "videos": len(labels),
        "views": views,
        "backbone": f"{cfg.model.backbone} ({cfg.model.pretrained})",
        "classes": list(names),
        "baseline": _summary(results[BASELINE]),
        "sets": [{**_summary(results[s]), **details[s], **wins_losses(rows, s)} for s in sets],
        "per_class": rows,
    }


def resolve_sets(cache: str, set_ids: Sequence[str]) -> list[str]:
    """The full ids of the named sets (a prefix is enough); each must be a different set."""
    store = open_store(cache, writable=False)
    try:
        ids = [choose_set(store, (), sid).id for sid in set_ids]
    finally:
        store.close()
    if len(set(ids)) != len(ids):
        raise TrainError("the same description set is named twice")
    return ids


def video_features(model, cfg, items, root: str, views: tuple[int, int], device):
    """Unit video embeddings ``[N, V, D]`` (V views per video) and the labels ``[N]``."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader

    ds = make_dataset(
        cfg, items, train=False, image_size=model.image_size, views=views, root=root, stats=model.input_stats
    )
    bs = cfg.eval.batch_size or 8
    loader = DataLoader(ds, batch_size=bs, shuffle=False, num_workers=cfg.data.num_workers)
    feats, labels = [], []
    with torch.no_grad(), autocast(device, cfg.run.precision):
        for batch in loader:
            video = batch_video(batch, device)
            if video.dim() == 5:
                video = video.unsqueeze(1)
            b, v = video.shape[:2]
            emb = F.normalize(model.encode_video(video.flatten(0, 1)).float(), dim=-1)
            feats.append(emb.view(b, v, -1).cpu())
            labels.append(batch["label"].cpu())
    if not feats:
        raise TrainError("the video list is empty")
    return torch.cat(feats), torch.cat(labels)


def _score(
    model, feats, labels, names: Sequence[str], spec: ClassifierSpec, precision: str
) -> dict[str, Any]:
    """One classifier's accuracy over the encoded videos (top-1, top-5, per class), scored and
    summarised by :mod:`msta.evaluate` as ``msta eval`` does (the views' softmax summed)."""
    import torch
    import torch.nn.functional as F

    with autocast(model.device, precision):
        weights, info = class_weights(model, names, spec)
    w = F.normalize(weights.float().cpu(), dim=-1)
    scale = float(model.logit_scale.detach().float().cpu())
    scores = view_scores(scale * torch.einsum("nvd,cd->nvc", feats, w))
    return {**summarize(prediction_rows(scores, labels), names, None), "classifier": info}


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    info = res["classifier"]
    return {"set": info.get("set", BASELINE), "encoder": info.get("encoder"), "top1": res["top1"],
            "per_class": res["per_class"]}  # fmt: skip


def per_class_table(names: Sequence[str], results: dict[str, Any], sets: Sequence[str]) -> list[dict]:
    """One row per class: each classifier's accuracy, and the sets strictly best / worst on it."""
    rows = []
    for name in names:
        acc = {k: results[k]["per_class"][name] for k in [BASELINE, *sets]}
        vals = [acc[s] for s in sets if acc[s] is not None]
        best = worst = None
        if len(sets) > 1 and vals and max(vals) > min(vals):
            top, low = [s for s in sets if acc[s] == max(vals)], [s for s in sets if acc[s] == min(vals)]
            best = top[0] if len(top) == 1 else None
            worst = low[0] if len(low) == 1 else None
        rows.append({"class": name, "accuracy": acc, "best": best, "worst": worst})
    return rows


def wins_losses(rows: Sequence[dict], set_id: str) -> dict[str, int]:
    """Classes where a set is strictly the best / the worst of the sets, and where it beats / trails
    the class names alone."""
    acc = [(r["accuracy"][set_id], r["accuracy"][BASELINE]) for r in rows]
    return {
        "wins": sum(1 for r in rows if r["best"] == set_id),
        "losses": sum(1 for r in rows if r["worst"] == set_id),
        "better_than_names": sum(1 for a, b in acc if a is not None and b is not None and a > b),
        "worse_than_names": sum(1 for a, b in acc if a is not None and b is not None and a < b),
    }


def set_details(
    cache: str, sets: Sequence[str], names: Sequence[str], encoder_fp: str | None, pricing: str | None
) -> dict[str, dict[str, Any]]:
    """Per set: its provenance, the tokens and cost of its generations, the audit's findings."""
    from descgen.audit import audit_set
    from descgen.pricing import load_price_table

    prices = load_price_table(pricing)
    store = open_store(cache, writable=False)
    out: dict[str, dict[str, Any]] = {}
    try:
        for sid in sets:
            set_ = store.get_set(sid)
            assert set_ is not None
            report = audit_set(
                store, set_, class_names=list(names), encoder_fp=encoder_fp, use_tokenizer=False
            )
            out[sid] = {
                "backend": set_.backend,
                "model": set_.model,
                "prompt": set_.prompt_fp,
                "n": set_.n,
                "usage": set_usage(store.generations(set_id=sid), set_.backend, set_.model, prices),
                "audit": {"counts": report.counts(), "flagged_classes": len(report.flagged_classes())},
            }
    finally:
        store.close()
    return out


def set_usage(generations: Sequence[dict], backend: str, model: str, prices) -> dict[str, Any]:
    """Requests and tokens of a set's generations; the cost by the price table
    (:meth:`descgen.pricing.PriceTable.costs`: answers that came through a batch at the batch price;
    None: not priced)."""

    def tokens(rows: Sequence[dict]) -> tuple[int, int]:
        return (
            sum(int(g.get("prompt_tokens") or 0) for g in rows),
            sum(int(g.get("completion_tokens") or 0) for g in rows),
        )

    batch = [g for g in generations if g.get("batch_id")]
    total = tokens(generations)
    cost = prices.costs(backend, model, total, tokens(batch))["cost_usd"]
    return {
        "requests": len(generations),
        "batch_requests": len(batch),
        "prompt_tokens": total[0],
        "completion_tokens": total[1],
        "cost_usd": None if cost is None else round(cost, 6),
    }


# --------------------------------------------------------------------------- rendering


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _cost(v: float | None) -> str:
    return "?" if v is None else f"${v:.6f}"


def _audit_text(s: dict[str, Any]) -> str:
    counts = s["audit"]["counts"]
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "none"


def summary_rows(result: dict[str, Any]) -> list[list[str]]:
    """The side-by-side table: one row per set (the class names first), as display strings."""
    base = result["baseline"]
    rows = [[BASELINE, "-", _pct(base["top1"]), "-", "-", "-", "-", "-", "-"]]
    for s in result["sets"]:
        u = s["usage"]
        rows.append([
            s["set"], f"{s['backend']}:{s['model']}", _pct(s["top1"]),
            f"{s['wins']}/{s['losses']}", f"{s['better_than_names']}/{s['worse_than_names']}",
            str(u["prompt_tokens"] + u["completion_tokens"]), _cost(u["cost_usd"]),
            str(s["audit"]["flagged_classes"]), _audit_text(s),
        ])  # fmt: skip
    return rows


HEADER = ["set", "source", "top-1 %", "wins/losses", "vs names +/-", "tokens", "cost", "flagged", "audit"]


def class_rows(result: dict[str, Any]) -> list[list[str]]:
    keys = [BASELINE, *(s["set"] for s in result["sets"])]
    return [
        [r["class"], *(_pct(r["accuracy"][k]) for k in keys), r["best"] or "-"] for r in result["per_class"]
    ]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(_md_cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
    return out


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Description sets compared",
        "",
        f"Zero-shot top-1 on {result['videos']} videos of `{result['val_list']}` ({len(result['classes'])} "
        f"classes, views {result['views']}), backbone {result['backbone']}; cache `{result['cache']}`.",
        "",
        *_md_table(HEADER, summary_rows(result)),
        "",
        "## Per class (accuracy %)",
        "",
        *_md_table(["class", BASELINE, *(s["set"] for s in result["sets"]), "best set"], class_rows(result)),
    ]
    return "\n".join(lines) + "\n"


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    e = html.escape
    out = ["<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
    return [*out, "</table>"]


def render_html(result: dict[str, Any]) -> str:
    e = html.escape
    head = (
        f"Zero-shot top-1 on {result['videos']} videos of {result['val_list']} "
        f"({len(result['classes'])} classes, views {result['views']}), backbone {result['backbone']}; "
        f"cache {result['cache']}."
    )
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>Description sets compared</title>',
        "<style>body{font-family:sans-serif}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}</style></head><body>",
        "<h1>Description sets compared</h1>",
        f"<p>{e(head)}</p>",
        *_html_table(HEADER, summary_rows(result)),
        "<h2>Per class (accuracy %)</h2>",
        *_html_table(
            ["class", BASELINE, *(s["set"] for s in result["sets"]), "best set"], class_rows(result)
        ),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_outputs(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """``compare.md``, ``compare.json`` and ``compare.html`` in ``out_dir`` (each written atomically)."""
    out = Path(out_dir).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainError(f"cannot create {out}: {exc.strerror or exc}") from None
    paths = {"markdown": out / "compare.md", "json": out / "compare.json", "html": out / "compare.html"}
    texts = {
        "markdown": render_markdown(result),
        "json": json.dumps(result, indent=1, ensure_ascii=False),
        "html": render_html(result),
    }
    for key, path in paths.items():
        try:
            write_text_atomic(path, texts[key])
        except OutputPathError as exc:
            raise TrainError(str(exc)) from None
    return paths
