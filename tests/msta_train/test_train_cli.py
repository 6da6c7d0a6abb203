"""``msta train`` / ``msta eval`` / ``msta predict`` as a user runs them, on real mp4 files: in this
process through the ``msta_cli`` fixture, and once per command in a child process (no traceback)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from . import class_list, make_cache, make_synth, run_msta_process, synth_args

pytestmark = pytest.mark.slow

SHORT = ["--set", "optim.epochs=1", "--set", "optim.batch_size=4", "--set", "optim.warmup_epochs=0"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory, msta_cli) -> tuple[Path, Path]:
    """A one-epoch run with the consistency loss; its cache starts without embeddings."""
    tmp = tmp_path_factory.mktemp("run")
    cache = tmp / "cache.db"
    make_cache(cache, class_list(synth))
    run = tmp / "run"
    res = msta_cli([*synth_args(synth, run, *SHORT), "--descriptions", str(cache)])
    assert res.returncode == 0, res.stderr
    return run, cache


def test_training_writes_a_complete_run(trained):
    run, _ = trained
    for name in ("config.yaml", "metrics.jsonl", "classes.json", "train_summary.json"):
        assert (run / name).is_file(), name
    for name in ("last", "best"):
        info = json.loads((run / "checkpoints" / f"{name}.json").read_text())
        assert (run / "checkpoints" / info["dir"] / "adapters.safetensors").is_file()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["type"] == "train"]
    assert train_rows and all(math.isfinite(r["loss"]) for r in train_rows)
    # The consistency term is part of the loss: loss = ce + 1.0 * cc, cc > 0.
    r = train_rows[-1]
    assert r["cc"] > 0 and r["loss"] == pytest.approx(r["ce"] + r["cc"], rel=1e-5)
    assert [r for r in rows if r["type"] == "val"]
    saved = (run / "config.yaml").read_text()
    assert "consistency_weight: 1.0" in saved and "epochs: 1" in saved


def test_missing_embeddings_are_encoded_and_stored_back(trained):
    from descgen.store import Store

    run, cache = trained
    info = json.loads((run / "classes.json").read_text())["descriptions"]
    assert info["encoder"].startswith("clip-tiny@")
    with Store(cache, create=False) as store:
        fps = [e["fingerprint"] for e in store.list_encoders()]
        assert info["encoder"] in fps
        assert store.texts_missing_embeddings(info["encoder"]) == []
        assert store.count_rows("embeddings") == 4 * 2 * 2  # classes x kinds x N


def test_eval_json_and_report_files(trained, msta_cli):
    run, _ = trained
    res = msta_cli(["eval", str(run), "--json"])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert 0.0 <= out["top1"] <= 1.0 and 0.0 <= out["top5"] <= 1.0
    assert out["top5"] == pytest.approx(1.0)  # 4 classes: the true class is always in the top 5
    assert out["checkpoint"] == "last"
    val = out["splits"]["val"]
    assert val["n"] == 8 and set(val["per_class"]) == set(class_list(Path(val["list"]).parent))
    for name in ("eval_last.json", "confusion_val.png", "training_curve.png"):
        p = run / name
        assert p.is_file() and p.stat().st_size > 0, name
    assert (run / "confusion_val.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((run / "eval_last.json").read_text())
    assert saved["top1"] == out["top1"] and len(saved["splits"]["val"]["confusion"]) == 4


def test_eval_both_checkpoints_and_several_splits(trained, synth, msta_cli):
    run, _ = trained
    lst = str(synth / "val.txt")
    res = msta_cli(
        ["eval", str(run), "--json", "--checkpoint", "both", "--split", lst, "--split", lst, "--no-plots"]
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert set(out["checkpoints"]) == {"last", "best"}
    group = out["groups"]["splits"]
    assert group["top1"]["std"] == pytest.approx(0.0) and out["top1"] == pytest.approx(group["top1"]["mean"])


def test_predict_with_a_run_and_zero_shot(trained, synth, msta_cli):
    run, _ = trained
    video = synth / "videos" / "val" / "left_to_right_000.mp4"
    res = msta_cli(["predict", str(video), "--run", str(run), "--classes-file", str(synth / "classes.csv"),
                    "--topk", "3", "--json"])  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    probs = [p["probability"] for p in out["predictions"]]
    assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    assert {p["class"] for p in out["predictions"]} <= set(class_list(synth))
    assert out["mode"].startswith("run ")
    res = msta_cli(
        ["predict", str(video), "--config", "tiny", "--classes", "a dog,a cat,a shape moving", "--json"]
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["mode"] == "zero-shot" and len(out["predictions"]) == 3
    assert sum(p["probability"] for p in out["predictions"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_reads_a_prepared_bank_like_the_video(trained, synth, msta_cli, tmp_path):
    from msta.prepare import Encoding, prepare_one

    run, _ = trained
    video = synth / "videos" / "val" / "left_to_right_000.mp4"
    bank = tmp_path / "left_to_right_000.mp4.rgbs"
    assert prepare_one(video, bank, Encoding(codec="raw"))["status"] == "done"
    found = []
    for path in (video, bank):
        res = msta_cli(["predict", str(path), "--run", str(run), "--classes-file", str(synth / "classes.csv"),
                        "--topk", "3", "--json"])  # fmt: skip
        assert res.returncode == 0, res.stderr
        found.append(json.loads(res.stdout)["predictions"])
    assert found[0] == found[1]  # the bank holds the very frames the decoder gives


def test_predict_reports_user_errors(synth):
    res = run_msta_process(["predict", str(synth / "missing.mp4"), "--config", "tiny", "--classes", "a,b"])
    assert res.returncode == 2 and "video not found" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_classes_without_descriptions_stop_the_run_before_it_starts(synth, tmp_path):
    names = class_list(synth)
    cache = tmp_path / "partial.db"
    make_cache(cache, names, skip=names[1:3])
    run = tmp_path / "run"
    res = run_msta_process([*synth_args(synth, run, *SHORT), "--descriptions", str(cache)])
    assert res.returncode == 2
    assert "Traceback" not in res.stderr and "error: " in res.stderr
    for missing in names[1:3]:
        assert missing in res.stderr
    assert names[0] not in res.stderr.split("descriptions in set")[-1]
    assert not (run / "checkpoints").exists()


def test_consistency_loss_needs_a_cache_unless_switched_off(synth, tmp_path, msta_cli):
    res = msta_cli(synth_args(synth, tmp_path / "a", *SHORT))
    assert res.returncode == 2 and "--descriptions" in res.stderr and "consistency_weight=0" in res.stderr


def test_multi_view_evaluation(trained, msta_cli):
    run, _ = trained
    res = msta_cli(["eval", str(run), "--json", "--views", "2x3", "--no-plots"])
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["views"] == "2x3" and out["splits"]["val"]["n"] == 8 and 0.0 <= out["top1"] <= 1.0


def test_eval_reports_user_errors(trained):
    run, _ = trained
    res = run_msta_process(["eval", str(run), "--views", "2x2", "--no-plots"])
    assert res.returncode == 2 and "CROPS 1 or 3" in res.stderr and "Traceback" not in res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1


def test_an_unreadable_video_is_skipped_not_fatal(tmp_path, msta_cli):
    data = make_synth(tmp_path / "data", videos_per_class=2, val_per_class=1)
    first = (data / "train.txt").read_text().split()[0]
    (data / first).write_bytes(b"not a video at all")
    run = tmp_path / "run"
    res = msta_cli(synth_args(data, run, *SHORT, "--set", "loss.consistency_weight=0"))
    assert res.returncode == 0, res.stderr
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["skipped_videos"] == 1 and "1 unreadable videos skipped" in res.stderr
