"""A short ``msta train -c synth`` on prepared synthetic videos reaches the accuracy of the same run
on the raw videos (same lists, same seed; only JPEG storage differs)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from msta.prepare import prepare_list
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
    prepared = tmp_path / "prepared"
    for name in ("train.txt", "val.txt"):
        res = prepare_list(data / name, data, prepared, workers=2)
        assert not res.failed and res.manifest_written
    runs = {kind: tmp_path / f"run_{kind}" for kind in ("raw", "prepared")}
    procs = {kind: _train(data, data if kind == "raw" else prepared, runs[kind]) for kind in runs}
    for p in procs.values():
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
    top1 = {}
    for kind, run in runs.items():
        res = run_msta_process(["eval", str(run), "--json", "--no-plots"])
        assert res.returncode == 0, res.stderr
        top1[kind] = json.loads(res.stdout)["top1"]
    # 32 validation videos: at most 4 predictions may differ
    assert abs(top1["raw"] - top1["prepared"]) <= 0.125 + 1e-9, top1
