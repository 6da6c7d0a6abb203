"""The audit as one self-contained HTML page.

Per class, the spatial and temporal descriptions side by side with their flags; each description
links (in-page anchors) to the generation that produced it (request parameters, raw response),
which links to the prompt text. Every piece of text from the cache is escaped; the page has no
script and loads nothing from outside.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from html import escape
from pathlib import Path

from descgen.audit import AuditReport, Finding
from descgen.encode import set_kinds
from descgen.store import Store

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#1b1b1b;background:#fff}
h1{font-size:1.4rem;margin:0 0 .3rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ccc}
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:.35rem .5rem;vertical-align:top}
th{background:#f3f3f3;text-align:left}tr.flagged>td{background:#fff4f2}tr.flagged>td.cls{border-left:4px solid #c62828}
ol{margin:0;padding-left:1.3rem}li.flagged{color:#b71c1c}.flag{display:inline-block;font-size:.75rem;
background:#c62828;color:#fff;border-radius:3px;padding:0 .3rem;margin:0 .15rem}
.meta{color:#555;font-size:.9rem}pre{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;
padding:.5rem;border:1px solid #e3e3e3;max-height:30rem;overflow:auto}.ok{color:#2e7d32}
.summary td{border:none;padding:.1rem .6rem .1rem 0}a{color:#1a4f9c}
"""


def _anchor(prefix: str, value: str) -> str:
    """A safe id: ``prefix-`` + hex digest (class names can hold any character)."""
    return f"{prefix}-{hashlib.sha256(value.encode('utf-8')).hexdigest()[:12]}"


def _flags_html(findings: list[Finding]) -> str:
    return "".join(
        f'<span class="flag" title="{escape(f.message)}">{escape(f.check)}</span>' for f in findings
    )


@dataclass
class _Page:
    """What the sections of the page share."""

    store: Store
    report: AuditReport
    kinds: tuple[str, ...]
    descs: dict[str, dict[str, list[str]]]
    gen_of: dict[tuple[str, str, int], int]
    by_class: dict[str, list[Finding]]  # class -> its findings (near duplicates on both classes)
    prompt: dict
    prompt_id: str

    @classmethod
    def of(cls, store: Store, report: AuditReport) -> _Page:
        set_ = report.set
        rows = store.description_rows(set_.id)
        by_class: dict[str, list[Finding]] = {}
        for f in report.findings:
            by_class.setdefault(f.class_name, []).append(f)
            if f.other_class:
                by_class.setdefault(f.other_class, []).append(f)
        return cls(
            store=store,
            report=report,
            kinds=tuple(set_kinds(set_)),
            descs=store.descriptions(set_.id),
            gen_of={(r["class_name"], r["kind"], r["idx"]): r["generation_id"] for r in rows},
            by_class=by_class,
            prompt=store.get_prompt(set_.prompt_fp) or {},
            prompt_id=_anchor("prompt", set_.prompt_fp),
        )


def render_html(store: Store, report: AuditReport) -> str:
    page = _Page.of(store, report)
    set_ = report.set
    out = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>descgen audit: {escape(report.dataset)} / {escape(set_.id)}</title><style>{_CSS}</style></head><body>",
        f"<h1>Description audit: {escape(report.dataset)}</h1>",
    ]
    out += _summary_html(page)
    out += _classes_html(page)
    out += _prompt_html(page)
    out += _generations_html(page)
    out.append("</body></html>\n")
    return "".join(out)


def _summary_html(page: _Page) -> list[str]:
    report, set_ = page.report, page.report.set
    enc_row = page.store.get_encoder(report.encoder) if report.encoder else None
    random_enc = bool(enc_row and enc_row.get("random_weights"))
    out = ['<table class="summary">']
    for label, value in (
        ("set", f"{set_.id} ({set_.backend}: {set_.model}, N={set_.n}, kinds: {', '.join(page.kinds)})"),
        ("classes", f"{len(report.classes)} (from {report.class_source})"),
        ("encoder", (report.encoder or "none") + (" (random weights)" if random_enc else "")),
        (
            "findings",
            f"{len(report.findings)} in {len(report.flagged_classes())} classes"
            + (": " + ", ".join(f"{k} {v}" for k, v in report.counts().items()) if report.findings else ""),
        ),
    ):
        out.append(f"<tr><td><b>{escape(label)}</b></td><td>{escape(value)}</td></tr>")
    out.append(
        f'<tr><td><b>prompt</b></td><td><a href="#{page.prompt_id}">{escape(set_.prompt_fp[:16])}</a> '
        f"{escape(str(page.prompt.get('name') or ''))}</td></tr>"
    )
    flagged_names = [c for c in report.classes if c in page.by_class]
    if flagged_names:
        links = ", ".join(f'<a href="#{_anchor("class", c)}">{escape(c)}</a>' for c in flagged_names)
        out.append(f"<tr><td><b>flagged</b></td><td>{links}</td></tr>")
    checks = ", ".join(f"{k}: {v}" for k, v in sorted(report.checks.items()))
    out.append(f'<tr><td><b>checks</b></td><td class="meta">{escape(checks)}</td></tr></table>')
    return out


def _classes_html(page: _Page) -> list[str]:
    out = ['<h2>Classes</h2><table id="classes"><thead><tr><th>class</th>']
    out += [f"<th>{escape(kind)}</th>" for kind in page.kinds]
    out.append("<th>flags</th></tr></thead><tbody>")
    for cname in page.report.classes:
        out += _class_row(page, cname)
    out.append("</tbody></table>")
    return out


def _class_row(page: _Page, cname: str) -> list[str]:
    fs = page.by_class.get(cname, [])
    flagged = bool(fs)
    checks_attr = " ".join(sorted({f.check for f in fs}))
    out = [
        f'<tr id="{_anchor("class", cname)}" class="{"flagged" if flagged else "clean"}" '
        f'data-flags="{escape(checks_attr)}">',
        f'<td class="cls">{escape(cname)}</td>',
    ]
    for kind in page.kinds:
        texts = page.descs.get(cname, {}).get(kind, [])
        if not texts:
            out.append("<td><i>none</i></td>")
            continue
        out.append("<td><ol>")
        for i, t in enumerate(texts):
            item_f = [f for f in fs if f.kind == kind and f.index == i and f.class_name == cname]
            gid = page.gen_of.get((cname, kind, i))
            link = f' <a href="#gen-{gid}" title="generation {gid}">[src]</a>' if gid is not None else ""
            li_cls = ' class="flagged"' if item_f else ""
            out.append(
                f"<li{li_cls}>{escape(t) if t.strip() else '<i>(empty)</i>'}{link}{_flags_html(item_f)}</li>"
            )
        out.append("</ol></td>")
    parts = []
    for f in fs:
        if f.index is not None:
            continue
        extra = f' <a href="#gen-{f.generation_id}">[src]</a>' if f.generation_id is not None else ""
        parts.append(f"{_flags_html([f])} {escape(f.message)}{extra}")
    out.append(
        f"<td>{'<br>'.join(parts) if parts else ('' if flagged else '<span class=ok>ok</span>')}</td></tr>"
    )
    return out


def _prompt_html(page: _Page) -> list[str]:
    prompt = page.prompt
    return [
        f'<h2 id="{page.prompt_id}">Prompt {escape(page.report.set.prompt_fp)}</h2>',
        f'<p class="meta">name {escape(str(prompt.get("name") or "?"))}, version '
        f"{escape(str(prompt.get('version') or '?'))}</p>",
        f"<pre>{escape(str(prompt.get('content') or '(prompt text not stored)'))}</pre>",
    ]


def _generations_html(page: _Page) -> list[str]:
    out = ["<h2>Generations</h2>"]
    classes_set = set(page.report.classes)
    for g in page.store.generations(page.report.set.id):
        if g["class_name"] in classes_set:
            out += _generation_html(g, page.prompt_id)
    return out


def _generation_html(g: dict, prompt_id: str) -> list[str]:
    params = g.get("params") or "{}"
    try:
        params = json.dumps(json.loads(params), sort_keys=True)
    except ValueError:
        pass
    out = [
        f'<div id="gen-{int(g["id"])}" class="gen"><h3>generation {int(g["id"])}: '
        f'<a href="#{_anchor("class", g["class_name"])}">{escape(g["class_name"])}</a> '
        f'<span class="meta">({escape(str(g["status"]))}'
        f"{', ' + escape(str(g['error'])) if g.get('error') else ''})</span></h3>",
        f'<p class="meta">backend {escape(str(g["backend"]))}, model {escape(str(g["model"]))}, '
        f"attempt {escape(str(g.get('attempt')))}, seed {escape(str(g.get('seed')))}, params {escape(params)}, "
        f"tokens {escape(str(g.get('prompt_tokens')))}/{escape(str(g.get('completion_tokens')))}, "
        f'prompt <a href="#{prompt_id}">{escape(str(g["prompt_fp"])[:16])}</a></p>',
    ]
    if g.get("request"):
        out.append(f"<details><summary>request</summary><pre>{escape(str(g['request']))}</pre></details>")
    out.append(f"<pre>{escape(str(g.get('raw_response') or '(no response)'))}</pre></div>")
    return out


def write_html(store: Store, report: AuditReport, path: str | Path) -> Path:
    from descgen.fileio import write_text_atomic

    return write_text_atomic(path, render_html(store, report))
