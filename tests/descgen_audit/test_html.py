"""The HTML audit page, rendered by a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from descgen.audit import audit_set
from descgen.report import write_html
from tests.descgen_helpers import make_generated_set, sentences, write_classes

EVIL = "<script>alert(1)</script>"
EVIL_TEXT = 'A video about "><img src=x onerror=alert(2)> & friends.'


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = _chromium()
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install chromium)"
)


def _chromium_flags(profile: str) -> list[str]:
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]


def dump_dom(page: Path) -> str:
    """The DOM after Chromium has loaded the page (scripts, if any, would have run)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [CHROMIUM, *_chromium_flags(profile), "--dump-dom", page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "<html" in res.stdout, res.stderr[-2000:]
    return res.stdout


class _Dom(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> _Dom:
    dom = _Dom()
    dom.feed(html)
    return dom


@pytest.fixture
def page(tmp_path, store, tiny_encoder):
    from descgen.encode import encode_missing

    classes = {
        "abseiling": sentences(
            "abseiling", ["ropes on a cliff", "a harness"], ["securing the rope", "descending"]
        ),
        EVIL: ([EVIL_TEXT, "A video about a <b>bold</b> claim."], sentences("x", [], ["only one step"])[1]),
        "archery": sentences("archery", ["a bow", "a  BOW"], ["drawing", "releasing"]),
        "failing": (None, None),
    }
    set_ = make_generated_set(
        store,
        "toy",
        classes,
        prompt_text="SYSTEM: describe </pre><script>alert(3)</script> {cls}",
        failures={"failing": [("error", "HTTP 500 <script>alert(4)</script>")]},
    )
    encode_missing(store, tiny_encoder, progress=False)
    report = audit_set(store, set_, list(classes), "test list", near_dup_threshold=0.999999)
    assert "abseiling" not in report.flagged_classes()
    out = write_html(store, report, tmp_path / "report" / "audit.html")
    return out, report


def test_page_source_is_escaped_and_self_contained(page):
    path, report = page
    html = path.read_text(encoding="utf-8")
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "onerror=alert(2)>" not in html
    dom = _parse(html)
    assert not [t for t, _ in dom.tags if t in ("script", "img", "iframe", "object", "embed", "link")]
    # Every in-page link has its target; nothing is loaded from outside.
    ids = {a.get("id") for _, a in dom.tags if a.get("id")}
    hrefs = [a["href"] for t, a in dom.tags if t == "a" and a.get("href")]
    assert hrefs and all(h.startswith("#") for h in hrefs)
    assert all(h[1:] in ids for h in hrefs), [h for h in hrefs if h[1:] not in ids]
    assert not [a for _, a in dom.tags if a.get("src")]


def test_cli_writes_html(tmp_path, store, descgen_cli):
    make_generated_set(store, "toy", {"a": sentences("a", ["x", "x"], ["s", "t"])})
    out = tmp_path / "a.html"
    r = descgen_cli("audit", "--cache", str(store.path), "--dataset", "toy", "--html", str(out))
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "duplicate" in out.read_text()


@needs_chromium
def test_page_renders_in_chromium_with_flags_and_no_script(page):
    path, report = page
    dom_html = dump_dom(path)
    dom = _parse(dom_html)
    tags = [t for t, _ in dom.tags]
    assert "script" not in tags and "img" not in tags
    text = "".join(dom.text)
    assert EVIL in text  # shown as text
    assert EVIL_TEXT in text
    assert "SYSTEM: describe </pre><script>alert(3)</script> {cls}" in text
    rows = {a.get("id"): a for t, a in dom.tags if t == "tr" and a.get("data-flags") is not None}
    flagged = [a for a in rows.values() if "flagged" in (a.get("class") or "").split()]
    clean = [a for a in rows.values() if "clean" in (a.get("class") or "").split()]
    assert len(rows) == 4
    assert len(flagged) == len(report.flagged_classes()) == 3 and len(clean) == 1
    flags = sorted(a["data-flags"] for a in flagged)
    assert "duplicate" in flags and any("error" in f and "missing" in f for f in flags)
    # Each description links to the generation that produced it, which links to the prompt.
    hrefs = [a["href"] for t, a in dom.tags if t == "a" and a.get("href")]
    gen_links = [h for h in hrefs if h.startswith("#gen-")]
    assert len(gen_links) >= 12
    assert any(h.startswith("#prompt-") for h in hrefs)
    ids = {a.get("id") for _, a in dom.tags if a.get("id")}
    assert all(h[1:] in ids for h in hrefs)


@needs_chromium
def test_screenshot_of_the_page(page, tmp_path):
    path, _ = page
    shot = tmp_path / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [
                CHROMIUM,
                *_chromium_flags(profile),
                f"--screenshot={shot}",
                "--window-size=1200,900",
                path.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert res.returncode == 0, res.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_class_list_file_with_markup_name(tmp_path):
    # A class list that holds markup is accepted and the name round-trips through the cache.
    path = write_classes(tmp_path / "evil.csv", [EVIL, "fine"])
    from descgen.datasets import load_class_list

    assert load_class_list(dataset="evil", classes_file=path).names == [EVIL, "fine"]
