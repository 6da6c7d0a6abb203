"""``descgen usage`` prices the answers that came through a batch at the batch price."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from descgen.batch import estimate, estimate_lines
from descgen.plan import plan
from descgen.store import Store
from tests.descgen_batch.fake_batch import FakeBatchAPI
from tests.descgen_helpers import run_cli, write_classes

DISCOUNT = 0.4  # not the packaged 0.5, so the test sees that the table's value is used
PRICES = {"fake-model": (150.0, 600.0), "other-model": (20.0, 80.0)}  # US dollars per 1M tokens


def _price_table(tmp_path: Path, discount: object = DISCOUNT) -> Path:
    path = tmp_path / "prices.toml"
    text = f"batch_discount = {discount}\n"
    for model, (inp, out) in PRICES.items():
        text += f'[models."{model}"]\ninput = {inp}\noutput = {out}\n'
    path.write_text(text)
    return path


def _classes(tmp_path: Path, count: int) -> Path:
    return write_classes(tmp_path / "toy.csv", [f"action number {i}" for i in range(count)])


def _generate(fake: FakeBatchAPI, tmp_path: Path, model: str, *extra: str):
    r = run_cli(
        "generate", "--classes", str(_classes(tmp_path, 4)), "--cache", str(tmp_path / "c.db"),
        "--model", model, "--base-url", fake.url, "--n", "2", *extra,
    )  # fmt: skip
    assert r.returncode == 0, r.output


def _expected(db: Path) -> dict[str, dict[str, float]]:
    """Per model, from the stored generations: batch requests and tokens, the online and the batch-priced cost."""
    out: dict[str, dict[str, float]] = {}
    with Store(db, readonly=True) as st:
        for g in st.generations():
            inp, outp = PRICES[g["model"]]
            online = (g["prompt_tokens"] * inp + g["completion_tokens"] * outp) / 1e6
            keys = ("batch", "bprompt", "bcompl", "batch_cost", "online", "cost")
            e = out.setdefault(g["model"], dict.fromkeys(keys, 0))
            e["online"] += online
            e["cost"] += online * (DISCOUNT if g["batch_id"] else 1.0)
            if g["batch_id"]:
                e["batch"] += 1
                e["bprompt"] += g["prompt_tokens"]
                e["bcompl"] += g["completion_tokens"]
                e["batch_cost"] += online * DISCOUNT
    return out


def _cache_with_batch_and_online_answers(fake: FakeBatchAPI, tmp_path: Path) -> Path:
    # fake-model: four answers through a batch, one of them invalid and answered again online
    fake.line_script = {"action number 2": "schema"}
    _generate(fake, tmp_path, "fake-model", "--batch", "--wait")
    assert fake.chat_log == ["action number 2"]
    # other-model: online only
    _generate(fake, tmp_path, "other-model")
    return tmp_path / "c.db"


def test_usage_applies_the_batch_discount(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    db = _cache_with_batch_and_online_answers(fake_batch, tmp_path)
    prices = _price_table(tmp_path)
    r = run_cli("usage", "--cache", str(db), "--pricing", str(prices), "--json")
    assert r.returncode == 0, r.output
    rep = json.loads(r.stdout)
    expected = _expected(db)
    assert expected["fake-model"]["batch"] == 4 and expected["other-model"]["batch"] == 0
    rows = {row["model"]: row for row in rep["models"]}
    assert set(rows) == set(expected)
    for model, e in expected.items():
        row = rows[model]
        assert row["batch_requests"] == e["batch"]
        assert (row["batch_prompt_tokens"], row["batch_completion_tokens"]) == (e["bprompt"], e["bcompl"])
        assert row["online_cost_usd"] == pytest.approx(e["online"], abs=1e-6)
        assert row["cost_usd"] == pytest.approx(e["cost"], abs=1e-6)
        assert row["batch_saving_usd"] == pytest.approx(e["online"] - e["cost"], abs=1e-6)
        assert row["batch_cost_usd"] == pytest.approx(e["batch_cost"], abs=1e-6)
    assert rows["fake-model"]["cost_usd"] < rows["fake-model"]["online_cost_usd"]
    assert rows["other-model"]["cost_usd"] == rows["other-model"]["online_cost_usd"]
    assert rep["batch_discount"] == DISCOUNT and rep["batch_requests"] == 4 and rep["cost_complete"]
    total = sum(e["cost"] for e in expected.values())
    online = sum(e["online"] for e in expected.values())
    assert rep["total_cost_usd"] == pytest.approx(total, abs=1e-6)
    assert rep["total_online_cost_usd"] == pytest.approx(online, abs=1e-6)
    assert rep["total_batch_saving_usd"] == pytest.approx(online - total, abs=1e-6)

    r = run_cli("usage", "--cache", str(db), "--pricing", str(prices))
    assert r.returncode == 0, r.output
    text = " ".join(r.stdout.split())
    assert "Answers through a batch (batch price x0.4)" in text
    assert f"estimated cost ${total:.4f} (4 through a batch at batch price x0.4;" in text
    assert f"online ${online:.4f}, batch saving ${online - total:.4f})" in text
    # the estimate of --dry-run says the same discount the same way
    p = plan(classes_file=_classes(tmp_path, 6), cache=db, model="fake-model", n=2)
    est = estimate(p, prices)
    assert est["batch_discount"] == DISCOUNT and est["batch_cost_usd"] == pytest.approx(
        est["cost_usd"] * DISCOUNT, abs=1e-6
    )
    assert "batch price x0.4;" in " ".join(estimate_lines(est))


def test_usage_without_batches_prices_online(fake_batch: FakeBatchAPI, tmp_path: Path) -> None:
    _generate(fake_batch, tmp_path, "other-model")
    db = tmp_path / "c.db"
    prices = _price_table(tmp_path)
    rep = json.loads(run_cli("usage", "--cache", str(db), "--pricing", str(prices), "--json").stdout)
    (row,) = rep["models"]
    assert row["batch_requests"] == 0 and row["batch_saving_usd"] == 0
    assert row["cost_usd"] == pytest.approx(_expected(db)["other-model"]["online"], abs=1e-6)
    out = run_cli("usage", "--cache", str(db), "--pricing", str(prices)).stdout
    assert "batch" not in out and "estimated cost" in out


@pytest.mark.parametrize("discount", ["2", '"half"', "-0.5"])
def test_bad_batch_discount_is_a_user_error(fake_batch: FakeBatchAPI, tmp_path: Path, discount: str) -> None:
    _generate(fake_batch, tmp_path, "other-model")
    prices = _price_table(tmp_path, discount)
    r = run_cli("usage", "--cache", str(tmp_path / "c.db"), "--pricing", str(prices))
    assert r.returncode == 2 and "batch_discount" in r.stderr
