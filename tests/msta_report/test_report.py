"""``msta report`` on hand-made run directories: grouping, the HM of the means, mean ± std, the
published numbers and the runs that must not be averaged."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest

from msta.config import load_config, save_config
from msta.report import build_report, load_published, write_report

B2N_LIST = "${{data_dir}}/splits/base2novel/lists/hmdb51/fs_base_s{}_train.txt"


def make_run(d: Path, configs, overrides=(), evals=None, finished=True) -> Path:
    """A run directory as training and ``msta eval`` leave it."""
    cfg = load_config(configs, [f"run.out={d}", *overrides])
    save_config(cfg, d / "config.yaml")
    if finished:
        (d / "train_summary.json").write_text(json.dumps({"epochs": cfg.optim.epochs}))
    for which, e in (evals or {}).items():
        views = e.pop("views", cfg.eval.views)
        (d / f"eval_{which}.json").write_text(json.dumps({"checkpoint": which, "views": views, **e}))
    return d


def b2n_eval(base: float, novel: float) -> dict:
    hm = 2 * base * novel / (base + novel)
    splits = {"base": {"top1": base, "top5": 0.9}, "novel": {"top1": novel, "top5": 0.8}}
    return {"splits": splits, "groups": {}, "base_to_novel": {"base": base, "novel": novel, "hm": hm},
            "top1": base, "top5": 0.9}  # fmt: skip


def b2n_run(root: Path, seed: int, base: float, novel: float, finished: bool = True) -> Path:
    return make_run(
        root / f"b2n{seed}",
        ["hmdb51", "paper-hmdb51", "base2novel"],
        [f"run.seed={seed}", f"data.train_list={B2N_LIST.format(seed)}"],
        {"last": b2n_eval(base, novel), "best": b2n_eval(base + 0.01, novel)},
        finished,
    )


def group(report: dict, label: str) -> dict:
    found = [g for g in report["groups"] if g["label"] == label]
    assert len(found) == 1, [g["label"] for g in report["groups"]]
    return found[0]


def test_base_to_novel_harmonic_mean_of_the_means(tmp_path):
    bases, novels = [0.8, 0.7, 0.9], [0.5, 0.6, 0.3]
    for s, (b, n) in enumerate(zip(bases, novels, strict=True), start=1):
        b2n_run(tmp_path, s, b, n)
    report = build_report([tmp_path])
    g = group(report, "base2novel hmdb51")
    last = g["checkpoints"]["last"]
    mb, mn = 100 * statistics.fmean(bases), 100 * statistics.fmean(novels)
    assert last["base"]["mean"] == pytest.approx(mb)
    assert last["novel"]["mean"] == pytest.approx(mn)
    assert last["hm_of_means"]["mean"] == pytest.approx(2 * mb * mn / (mb + mn))
    per_seed = [200 * b * n / (b + n) for b, n in zip(bases, novels, strict=True)]
    assert last["hm"]["values"] == pytest.approx(per_seed)
    assert statistics.fmean(per_seed) != pytest.approx(last["hm_of_means"]["mean"])  # not the mean of HMs
    assert sorted(g["seeds"]) == [1, 2, 3]
    rows = [r for r in report["comparison"] if r["group"] == g["label"] and r["checkpoint"] == "last"]
    assert [r["metric"] for r in rows] == ["HM of means"]
    pubs = {p["method"]: p for p in rows[0]["published"]}
    assert set(pubs) == {"MSTA", "FROSTER", "ViFi-CLIP"}
    assert pubs["MSTA"]["backbone"] == "ViCLIP-B/16" and pubs["FROSTER"]["backbone"] == "CLIP ViT-B/16"
    assert pubs["MSTA"]["diff"] == pytest.approx(last["hm_of_means"]["mean"] - 66.3)


def test_mean_and_std_over_seeds_and_separate_groups(tmp_path):
    few = ["hmdb51", "paper-hmdb51", "fewshot"]
    for seed, top1 in ((1, 0.6), (2, 0.7)):
        make_run(tmp_path / f"k16_{seed}", few, [f"run.seed={seed}"], {"last": {"top1": top1, "top5": 0.9}})
    make_run(tmp_path / "other_lr", few, ["optim.lr=0.01"], {"last": {"top1": 0.1, "top5": 0.5}})
    report = build_report([tmp_path])
    labels = sorted(g["label"] for g in report["groups"])
    assert len(labels) == 2 and all(lb.startswith("fewshot hmdb51 K=16 [") for lb in labels)
    g = next(g for g in report["groups"] if len(g["runs"]) == 2)
    top1 = g["checkpoints"]["last"]["top1"]
    assert top1["mean"] == pytest.approx(65.0)
    assert top1["std"] == pytest.approx(100 * statistics.stdev([0.6, 0.7]))
    row = next(r for r in report["comparison"] if r["group"] == g["label"] and r["metric"].startswith("top1"))
    assert [p["value"] for p in row["published"]] == [70.4]  # MSTA K=16 on HMDB51
    assert row["published"][0]["diff"] == pytest.approx(65.0 - 70.4)


def test_zero_shot_mean_and_std_over_splits(tmp_path):
    tops = [0.5, 0.6, 0.55]
    splits = {f"split{i}": {"top1": t, "top5": 0.9, "group": "hmdb51"} for i, t in enumerate(tops, 1)}
    ev = {"splits": splits, "top1": statistics.fmean(tops), "top5": 0.9, "views": "4x3",
          "groups": {"hmdb51": {"splits": list(splits), "top1": {"mean": statistics.fmean(tops),
                                "std": statistics.stdev(tops)}, "top5": {"mean": 0.9, "std": 0.0}}}}  # fmt: skip
    make_run(tmp_path / "zs", ["k400", "paper-k400", "zeroshot"], [], {"last": ev})
    report = build_report([tmp_path / "zs"])
    g = group(report, "zeroshot k400")
    row = next(r for r in report["comparison"] if r["group"] == g["label"])
    assert row["metric"] == "hmdb51 top-1"
    assert row["mean"] == pytest.approx(100 * statistics.fmean(tops))
    assert row["split_std"] == pytest.approx(100 * statistics.stdev(tops))
    assert {p["method"]: p["value"] for p in row["published"]} == {
        "MSTA": 55.8,
        "FROSTER": 54.8,
        "ViFi-CLIP": 51.3,
    }


def test_missing_and_unfinished_runs_are_listed_not_averaged(tmp_path):
    b2n_run(tmp_path, 1, 0.8, 0.5)
    b2n_run(tmp_path, 2, 0.1, 0.1, finished=False)
    make_run(tmp_path / "noeval", ["hmdb51", "paper-hmdb51", "fewshot"], [])
    report = build_report([tmp_path / "b2n1", tmp_path / "b2n2", tmp_path / "gone", tmp_path / "noeval"])
    status = {Path(x["run_dir"]).name: x["status"] for x in report["excluded"]}
    assert status == {"b2n2": "unfinished", "gone": "missing", "noeval": "not evaluated"}
    g = group(report, "base2novel hmdb51")
    assert g["checkpoints"]["last"]["base"]["values"] == pytest.approx([80.0])
    assert any("b2n2" in x for x in g["incomplete"])
    files = write_report(report, tmp_path / "out")
    md = files["markdown"].read_text()
    assert "Missing or unfinished" in md and "gone: missing" in md and "b2n2: unfinished" in md


def test_report_command_writes_markdown_json_and_png(tmp_path, msta_cli):
    for s in (1, 2):
        b2n_run(tmp_path / "runs", s, 0.8, 0.5)
    res = msta_cli(["report", str(tmp_path / "runs"), "--json", "--out", str(tmp_path / "out")])
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["groups"][0]["checkpoints"]["last"]["hm_of_means"]["mean"] == pytest.approx(200 * 0.4 / 1.3)
    for name in ("report.md", "report.json", "report.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert msta_cli(["report", str(tmp_path / "nothing")]).returncode == 0  # listed as missing


def test_published_numbers_are_those_of_the_spec():
    rows = load_published()
    get = {(r["method"], r["protocol"], r["dataset"], r["shots"], r["metric"]): r["value"] for r in rows}
    assert get[("MSTA", "base2novel", "k400", None, "hm")] == 72.0
    assert get[("MSTA", "fewshot", "ssv2", 8, "top1")] == 13.3
    assert get[("MSTA", "supervised", "k400", None, "top5")] == 96.2
    assert get[("ViFi-CLIP", "zeroshot", "k600", None, "top1")] == 71.2
    assert all(r["source"] and r["backbone"] for r in rows)
    assert not math.isnan(sum(get.values()))
