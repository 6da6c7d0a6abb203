"""``msta compare`` on the synthetic motion data: two description sets, three outputs, one set of
numbers."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.msta_train import class_list

from .conftest import synth_overrides


def _compare_args(synth, cache, out, *sets):
    return [
        "compare", *sets, "--cache", str(cache), "--val-list", str(synth / "val.txt"), "--root", str(synth),
        "--classes", str(synth / "classes.csv"), "-c", "synth", *synth_overrides(synth), "--out", str(out),
    ]  # fmt: skip


def test_compare_writes_three_consistent_outputs(synth, two_sets, tmp_path, msta_cli):
    cache, set_a, set_b = two_sets
    out = tmp_path / "cmp"
    res = msta_cli([*_compare_args(synth, cache, out, set_a[:10], set_b), "--json"])
    assert res.returncode == 0, res.stderr
    printed = json.loads(res.stdout)
    saved = json.loads((out / "compare.json").read_text())
    assert printed == saved
    names = class_list(synth)
    assert saved["videos"] == 12 and saved["classes"] == names
    assert [s["set"] for s in saved["sets"]] == [set_a, set_b]
    a, b = saved["sets"]
    # Tokens and cost from the generations and descgen's price table (per 1M tokens).
    assert a["usage"]["prompt_tokens"] == 4 * 100 and a["usage"]["completion_tokens"] == 4 * 50
    assert a["usage"]["cost_usd"] == round((400 * 0.15 + 200 * 0.60) / 1e6, 6)
    assert b["usage"]["cost_usd"] == round((800 * 2.50 + 320 * 10.00) / 1e6, 6)
    # Per-class accuracies agree with top-1 (3 videos per class) and with wins and losses.
    for s in (saved["baseline"], a, b):
        per = [s["per_class"][c] for c in names]
        assert abs(sum(per) / len(per) - s["top1"]) < 1e-9
    for s in (a, b):
        assert s["wins"] == sum(1 for r in saved["per_class"] if r["best"] == s["set"])
        assert s["losses"] == sum(1 for r in saved["per_class"] if r["worst"] == s["set"])
    assert a["wins"] == b["losses"] and a["losses"] == b["wins"]
    assert "counts" in a["audit"] and "flagged_classes" in a["audit"]
    md = (out / "compare.md").read_text()
    page = (out / "compare.html").read_text()
    for s in (a, b):
        cells = f"{100 * s['top1']:.1f} | {s['wins']}/{s['losses']}"
        assert cells in md
        assert f"<td>{100 * s['top1']:.1f}</td><td>{s['wins']}/{s['losses']}</td>" in page
        assert s["set"] in md and s["set"] in page


def test_compare_matches_eval_with_descriptions(synth, two_sets, tmp_path, msta_cli):
    cache, set_a, _ = two_sets
    res = msta_cli([*_compare_args(synth, cache, tmp_path / "o", set_a), "--json"])
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)["sets"][0]
    ev = msta_cli([
        "eval", "--zero-shot", "-c", "synth", *synth_overrides(synth), "--split", str(synth / "val.txt"),
        "--classes", str(synth / "classes.csv"), "--root", str(synth), "--json",
        "--classifier", "descriptions", "--descriptions", str(cache), "--set-id", set_a,
    ])  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    val = json.loads(ev.stdout)["splits"]["val"]
    assert abs(val["top1"] - got["top1"]) < 1e-9
    assert val["per_class"] == got["per_class"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compare_runs_in_the_configured_precision(
    synth, two_sets, tmp_path, msta_cli, monkeypatch, precision
):
    import msta.compare

    seen: list[str] = []

    def record(device, precision):
        seen.append(precision)
        return contextlib.nullcontext()

    monkeypatch.setattr(msta.compare, "autocast", record)
    cache, set_a, _ = two_sets
    args = [*_compare_args(synth, cache, tmp_path / "o", set_a), "--set", f"run.precision={precision}"]
    res = msta_cli(args)
    assert res.returncode == 0, res.stderr
    assert len(seen) == 3 and set(seen) == {precision}  # the videos, then two classifiers


def test_compare_escapes_html(synth, two_sets, tmp_path, msta_cli):
    from msta.compare import render_html, render_markdown

    cache, set_a, _ = two_sets
    res = msta_cli([*_compare_args(synth, cache, tmp_path / "o", set_a), "--json"])
    result = json.loads(res.stdout)
    result["val_list"] = "<script>alert(1)</script>"
    result["per_class"][0]["class"] = "a|b <b>"
    page = render_html(result)
    assert "<script>" not in page and "&lt;script&gt;" in page and "a|b &lt;b&gt;" in page
    assert "a\\|b <b>" in render_markdown(result)


def test_compare_user_errors(synth, two_sets, tmp_path, msta_cli):
    cache, set_a, _ = two_sets
    res = msta_cli(_compare_args(synth, cache, tmp_path / "o", "ffffffffffff"))
    assert res.returncode == 2 and res.stderr.startswith("error:"), res.stderr
    res = msta_cli(_compare_args(synth, tmp_path / "none.db", tmp_path / "o", set_a))
    assert res.returncode == 2 and "not found" in res.stderr
    res = msta_cli(_compare_args(synth, cache, tmp_path / "o", set_a, set_a))
    assert res.returncode == 2 and "twice" in res.stderr


def test_set_usage_prices_batch_answers_at_the_batch_price():
    from descgen.pricing import PriceTable
    from msta.compare import set_usage

    table = PriceTable(prices={"m": {"input": 2.0, "output": 8.0}}, batch_discount=0.25)
    rows = [
        {"prompt_tokens": 1000, "completion_tokens": 100, "batch_id": None},
        {"prompt_tokens": 3000, "completion_tokens": 500, "batch_id": "batch_1"},
        {"prompt_tokens": 2000, "completion_tokens": 300, "batch_id": "batch_1"},
    ]
    usage = set_usage(rows, "openai", "m", table)
    online = (1000 * 2.0 + 100 * 8.0) / 1e6
    batch = (5000 * 2.0 + 800 * 8.0) / 1e6 * 0.25
    assert usage["cost_usd"] == round(online + batch, 6) and usage["batch_requests"] == 2
    assert usage["prompt_tokens"] == 6000 and usage["completion_tokens"] == 900
    assert set_usage(rows, "openai", "unpriced", table)["cost_usd"] is None
