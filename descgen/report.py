"""The audit as one self-contained HTML page.

Per class, the spatial and temporal descriptions side by side with their flags; each description
links (in-page anchors) to the generation that produced it (request parameters, raw response),
which links to the prompt text. Every piece of text from the cache is escaped; the page has no
script and loads nothing from outside.
"""

from __future__ import annotations

import hashlib
import json
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


def render_html(store: Store, report: AuditReport) -> str:
    set_ = report.set
    kinds = set_kinds(set_)
    descs = store.descriptions(set_.id)
    rows = store.description_rows(set_.id)
    gen_of = {(r["class_name"], r["kind"], r["idx"]): r["generation_id"] for r in rows}
    by_class: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_class.setdefault(f.class_name, []).append(f)
        if f.other_class:
            by_class.setdefault(f.other_class, []).append(f)
    enc_row = store.get_encoder(report.encoder) if report.encoder else None
    random_enc = bool(enc_row and enc_row.get("random_weights"))
    prompt = store.get_prompt(set_.prompt_fp) or {}
    prompt_id = _anchor("prompt", set_.prompt_fp)
    out: list[str] = []
    w = out.append
    w('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">')
    w(
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
    )
    w(
        f"<title>descgen audit: {escape(report.dataset)} / {escape(set_.id)}</title><style>{_CSS}</style></head><body>"
    )
    w(f"<h1>Description audit: {escape(report.dataset)}</h1>")
    w('<table class="summary">')
    for label, value in (
        ("set", f"{set_.id} ({set_.backend}: {set_.model}, N={set_.n}, kinds: {', '.join(kinds)})"),
        ("classes", f"{len(report.classes)} (from {report.class_source})"),
        ("encoder", (report.encoder or "none") + (" (random weights)" if random_enc else "")),
        (
            "findings",
            f"{len(report.findings)} in {len(report.flagged_classes())} classes"
            + (": " + ", ".join(f"{k} {v}" for k, v in report.counts().items()) if report.findings else ""),
        ),
    ):
        w(f"<tr><td><b>{escape(label)}</b></td><td>{escape(value)}</td></tr>")
    w(
        f'<tr><td><b>prompt</b></td><td><a href="#{prompt_id}">{escape(set_.prompt_fp[:16])}</a> '
        f"{escape(str(prompt.get('name') or ''))}</td></tr>"
    )
    flagged_names = [c for c in report.classes if c in by_class]
    if flagged_names:
        links = ", ".join(f'<a href="#{_anchor("class", c)}">{escape(c)}</a>' for c in flagged_names)
        w(f"<tr><td><b>flagged</b></td><td>{links}</td></tr>")
    checks = ", ".join(f"{k}: {v}" for k, v in sorted(report.checks.items()))
    w(f'<tr><td><b>checks</b></td><td class="meta">{escape(checks)}</td></tr></table>')

    w('<h2>Classes</h2><table id="classes"><thead><tr><th>class</th>')
    for kind in kinds:
        w(f"<th>{escape(kind)}</th>")
    w("<th>flags</th></tr></thead><tbody>")
    for cname in report.classes:
        fs = by_class.get(cname, [])
        flagged = bool(fs)
        cls_id = _anchor("class", cname)
        checks_attr = " ".join(sorted({f.check for f in fs}))
        w(
            f'<tr id="{cls_id}" class="{"flagged" if flagged else "clean"}" data-flags="{escape(checks_attr)}">'
        )
        w(f'<td class="cls">{escape(cname)}</td>')
        for kind in kinds:
            texts = descs.get(cname, {}).get(kind, [])
            if not texts:
                w("<td><i>none</i></td>")
                continue
            w("<td><ol>")
            for i, t in enumerate(texts):
                item_f = [f for f in fs if f.kind == kind and f.index == i and f.class_name == cname]
                gid = gen_of.get((cname, kind, i))
                link = f' <a href="#gen-{gid}" title="generation {gid}">[src]</a>' if gid is not None else ""
                li_cls = ' class="flagged"' if item_f else ""
                w(
                    f"<li{li_cls}>{escape(t) if t.strip() else '<i>(empty)</i>'}{link}{_flags_html(item_f)}</li>"
                )
            w("</ol></td>")
        row_f = [f for f in fs if f.index is None]
        parts = []
        for f in row_f:
            extra = ""
            if f.generation_id is not None:
                extra = f' <a href="#gen-{f.generation_id}">[src]</a>'
            parts.append(f"{_flags_html([f])} {escape(f.message)}{extra}")
        w(f"<td>{'<br>'.join(parts) if parts else ('' if flagged else '<span class=ok>ok</span>')}</td></tr>")
    w("</tbody></table>")

    w(f'<h2 id="{prompt_id}">Prompt {escape(set_.prompt_fp)}</h2>')
    w(
        f'<p class="meta">name {escape(str(prompt.get("name") or "?"))}, version '
        f"{escape(str(prompt.get('version') or '?'))}</p>"
    )
    w(f"<pre>{escape(str(prompt.get('content') or '(prompt text not stored)'))}</pre>")

    w("<h2>Generations</h2>")
    classes_set = set(report.classes)
    for g in store.generations(set_.id):
        if g["class_name"] not in classes_set:
            continue
        params = g.get("params") or "{}"
        try:
            params = json.dumps(json.loads(params), sort_keys=True)
        except ValueError:
            pass
        w(
            f'<div id="gen-{int(g["id"])}" class="gen"><h3>generation {int(g["id"])}: '
            f'<a href="#{_anchor("class", g["class_name"])}">{escape(g["class_name"])}</a> '
            f'<span class="meta">({escape(str(g["status"]))}'
            f"{', ' + escape(str(g['error'])) if g.get('error') else ''})</span></h3>"
        )
        w(
            f'<p class="meta">backend {escape(str(g["backend"]))}, model {escape(str(g["model"]))}, '
            f"attempt {escape(str(g.get('attempt')))}, seed {escape(str(g.get('seed')))}, params {escape(params)}, "
            f"tokens {escape(str(g.get('prompt_tokens')))}/{escape(str(g.get('completion_tokens')))}, "
            f'prompt <a href="#{prompt_id}">{escape(str(g["prompt_fp"])[:16])}</a></p>'
        )
        if g.get("request"):
            w(f"<details><summary>request</summary><pre>{escape(str(g['request']))}</pre></details>")
        w(f"<pre>{escape(str(g.get('raw_response') or '(no response)'))}</pre></div>")
    w("</body></html>\n")
    return "".join(out)


def write_html(store: Store, report: AuditReport, path: str | Path) -> Path:
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_html(store, report), encoding="utf-8")
    tmp.replace(path)
    return path
