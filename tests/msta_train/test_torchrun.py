"""``torchrun --nproc_per_node=2`` on the CPU (Gloo) trains exactly like one process with the same
global batch: same losses, same validation metrics, same weights (within float tolerance)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from . import (
    REPO,
    TORCHRUN,
    class_list,
    make_cache,
    make_synth,
    msta_cmd,
    run_msta_process,
    subprocess_env,
    synth_args,
)

pytestmark = pytest.mark.slow

ARGS = [
    "--set", "optim.epochs=2", "--set", "optim.batch_size=4", "--set", "optim.warmup_epochs=1",
    "--set", "run.log_every_steps=1", "--set", "eval.batch_size=2",
]  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.skipif(not TORCHRUN.is_file(), reason="torchrun is not installed in this environment")
def test_two_processes_match_one_process(tmp_path):
    from msta.checkpoint import load_weights

    data = make_synth(tmp_path / "data")
    cache = tmp_path / "cache.db"
    make_cache(cache, class_list(data))

    one = tmp_path / "one"
    res = run_msta_process([*synth_args(data, one, *ARGS), "--descriptions", str(cache)])
    assert res.returncode == 0, res.stderr

    two = tmp_path / "two"
    cmd = [
        str(TORCHRUN), "--standalone", "--nproc_per_node=2", "--no-python",
        *msta_cmd(), *synth_args(data, two, *ARGS), "--descriptions", str(cache),
    ]  # fmt: skip
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, env=subprocess_env(), cwd=str(REPO)
    )
    assert res.returncode == 0, res.stderr[-4000:]
    assert "2 processes" in res.stderr

    a, b = _rows(one), _rows(two)
    assert [(r["type"], r["global_step"]) for r in a] == [(r["type"], r["global_step"]) for r in b]
    assert len([r for r in a if r["type"] == "train"]) == 8
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "ce", "cc", "acc", "top1", "top5", "lr"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], rel=1e-4, abs=1e-5), (k, ra, rb)

    w1, i1 = load_weights(one)
    w2, i2 = load_weights(two)
    assert i1["global_step"] == i2["global_step"] == 8
    worst = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert worst < 1e-4, worst

    s1 = json.loads((one / "train_summary.json").read_text())
    s2 = json.loads((two / "train_summary.json").read_text())
    assert s1["world_size"] == 1 and s2["world_size"] == 2
    assert s2["last"]["top1"] == pytest.approx(s1["last"]["top1"])
    # Only rank 0 wrote the run directory: one metrics line per event, not two.
    assert len(a) == len(b)
