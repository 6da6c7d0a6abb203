"""A short ``msta train -c synth`` on prepared synthetic videos reaches the accuracy of the same run
on the raw videos (same lists, same seed; only JPEG storage differs), and matches it exactly when the
frames are stored uncompressed (``--codec raw``: the very frames the decoder gives)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from msta.prepare import prepare_list
from msta.run import read_metrics
from tests.msta_train import make_synth, run_msta_process, start_msta_process, synth_args

pytestmark = pytest.mark.slow


def _train(data: Path, root: Path, out: Path) -> subprocess.Popen:
    extra = [
        "--set", f"data.classes={data / 'classes.csv'}",
        "--set", f"data.train_list={data / 'train.txt'}", "--set", f"data.val_list={data / 'val.txt'}",
        "--set", "loss.consistency_weight=0", "--set", "eval.every=0", "--set", "optim.epochs=6",
    ]  # fmt: skip
    return start_msta_process(synth_args(root, out, *extra))


def test_training_on_prepared_data_matches_raw_videos(tmp_path):
    data = make_synth(tmp_path / "synth", videos_per_class=12, val_per_class=8, size=32)
    roots = {"raw": data, "jpeg": tmp_path / "prepared-jpeg", "rgb": tmp_path / "prepared-rgb"}
    for kind, codec in (("jpeg", "jpeg"), ("rgb", "raw")):
        for name in ("train.txt", "val.txt"):
            res = prepare_list(data / name, data, roots[kind], workers=2, codec=codec)
            assert not res.failed and res.manifest_written
    runs = {kind: tmp_path / f"run_{kind}" for kind in roots}
    procs = {kind: _train(data, roots[kind], runs[kind]) for kind in runs}
    for p in procs.values():
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    top1, losses = {}, {}
    for kind, run in runs.items():
        res = run_msta_process(["eval", str(run), "--json", "--no-plots"])
        assert res.returncode == 0, res.stderr
        top1[kind] = json.loads(res.stdout)["top1"]
        losses[kind] = [row["loss"] for row in read_metrics(run) if "loss" in row]
    # 32 validation videos: at most 4 predictions may differ
    assert abs(top1["raw"] - top1["jpeg"]) <= 0.125 + 1e-9, top1
    # uncompressed frames are the decoded frames: the same run, step for step
    assert losses["raw"] and top1["rgb"] == top1["raw"] and losses["rgb"] == losses["raw"], (top1, losses)
