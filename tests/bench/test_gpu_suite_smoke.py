"""``bench/gpu_suite.py`` end to end on the CPU with the tiny backbone: the script a GPU machine runs
must work the first time, since GPU time is short. The figures themselves mean nothing here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from msta.video import PREPARED_HEADER
from tests.msta_train import REPO, subprocess_env

pytestmark = pytest.mark.slow


def test_gpu_suite_runs_every_part_and_writes_its_results(tmp_path):
    out = tmp_path / "suite.json"
    cmd = [sys.executable, str(REPO / "bench" / "gpu_suite.py"), "--device", "cpu", "--backbone", "clip-tiny",
           "--batch", "2", "--videos", "2", "--seconds", "1", "--no-compile", "--classes", "8",
           "--steps", "2", "--warmup", "1", "--workers", "2", "--out", str(out),
           "--set", "adapter.dim=48", "--set", "adapter.start=1", "--set", "adapter.end=4"]  # fmt: skip
    res = subprocess.run(
        cmd, cwd=str(REPO), env=subprocess_env(), capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr[-3000:]
    found = json.loads(out.read_text())
    assert set(found["eager"]) == {"msta-256", "msta-128", "full-ft"} and "compiled" not in found
    step = found["end_to_end"]["msta-128"]
    assert step["input_size"] == 64 and step["batch"] == 2 and len(step["times"]) == 2
    assert found["loader"]["clips_per_s"] > 0 and found["loader"]["codec"] == "raw"
    # 1 s at 25 fps, 320x240, uncompressed: the header and the frames, nothing else
    assert (
        found["prepared"]["videos"] == 2
        and found["prepared"]["bytes_per_video"] == PREPARED_HEADER.size + 25 * 240 * 320 * 3
    )
    assert found["end_to_end_ratio"] > 0
    assert "goal end to end" in res.stdout and "goal MSTA(256, 1-12)" in res.stdout
