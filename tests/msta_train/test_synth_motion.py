"""End to end on ``msta data synth`` videos, through the command line: the classes differ only in
the direction of motion (each class is the time reversal of another), so a model that ignores
frame order cannot beat the dataset's frame-averaging ceiling, while MSTA's temporal branch can.

Both trainings run side by side (one thread each) with the ``synth`` preset; ``msta eval`` reports
the last checkpoint on the validation list (no checkpoint is picked on it).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from . import start_msta_process

pytestmark = pytest.mark.slow

SYNTH = ["--videos-per-class", "40", "--val-per-class", "16", "--frames", "8"]


def _train(data: Path, out: Path, temporal: bool) -> subprocess.Popen:
    args = [
        "train", "--config", "synth", "--no-progress",
        "--set", f"data.root={data}", "--set", f"run.out={out}",
        "--set", f"adapter.temporal={str(temporal).lower()}", "--set", "loss.consistency_weight=0",
        "--set", "eval.every=0",  # validate once, after the last epoch: time goes to training
    ]  # fmt: skip
    return start_msta_process(args)


def test_temporal_branch_learns_motion_that_frame_averaging_cannot(tmp_path, msta_cli):
    t0 = time.monotonic()
    data = tmp_path / "synth"
    res = msta_cli(["data", "synth", "--out", str(data), *SYNTH])
    assert res.returncode == 0, res.stderr
    manifest = json.loads((data / "manifest.json").read_text())
    ceiling = manifest["frame_order_free_accuracy_ceiling"]
    assert manifest["counts"] == {"train": 160, "val": 64} and ceiling == 0.5

    procs = {t: _train(data, tmp_path / f"run_{t}", t) for t in (True, False)}
    for p in procs.values():
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]

    top1 = {}
    for t in (True, False):
        res = msta_cli(["eval", str(tmp_path / f"run_{t}"), "--json", "--no-plots"])
        assert res.returncode == 0, res.stderr
        top1[t] = json.loads(res.stdout)["top1"]
    elapsed = time.monotonic() - t0
    print(f"synthetic motion: top-1 with temporal branch {top1[True]:.3f}, without {top1[False]:.3f} "
          f"(frame-averaging ceiling {ceiling:.2f}); {elapsed:.0f} s")  # fmt: skip
    # Without the temporal branch the model sees an unordered set of frames: it cannot beat the
    # frame-averaging ceiling (it may not reach it either).
    assert top1[False] <= ceiling + 0.1, top1
    assert top1[True] >= 0.9, top1
