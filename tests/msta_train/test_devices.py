"""A device the machine lacks is one line, whichever command sets the device up."""

from __future__ import annotations

import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_zero_shot_evaluation_on_a_missing_device_is_one_line(tmp_path, msta_cli):
    (tmp_path / "val.txt").write_text("a.mp4 0\n")
    (tmp_path / "classes.csv").write_text("id,name\n0,waving\n")
    res = msta_cli([
        "eval", "--zero-shot", "-c", "tiny", "--split", str(tmp_path / "val.txt"),
        "--classes", str(tmp_path / "classes.csv"), "--root", str(tmp_path), "--set", "run.device=cuda",
    ])  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == ["error: cuda is not available here; available: cpu"]
