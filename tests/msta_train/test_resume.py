"""A training process killed with SIGKILL mid-epoch and resumed ends with the same weights as an
uninterrupted run (real subprocesses, real checkpoints)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from . import make_synth, run_msta_process, start_msta_process, synth_args

pytestmark = pytest.mark.slow

ARGS = [
    "--set", "optim.epochs=3", "--set", "optim.batch_size=4", "--set", "optim.warmup_epochs=1",
    "--set", "loss.consistency_weight=0", "--set", "run.save_every_steps=1", "--set", "run.log_every_steps=1",
]  # fmt: skip
STEPS = 3 * 4  # 16 training videos, batch 4


def _weights(run: Path, name: str = "last"):
    from msta.checkpoint import load_weights

    return load_weights(run, name)


def _pointer(run: Path) -> dict | None:
    p = run / "checkpoints" / "last.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(tmp_path):
    data = make_synth(tmp_path / "data")
    ref = tmp_path / "ref"
    res = run_msta_process(synth_args(data, ref, *ARGS))
    assert res.returncode == 0, res.stderr

    run = tmp_path / "killed"
    proc = start_msta_process(synth_args(data, run, *ARGS), stdout=subprocess.DEVNULL)
    killed_at = None
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            info = _pointer(run)
            # Kill in the second epoch, after a mid-epoch checkpoint.
            if info and info["epoch"] == 1 and info["step_in_epoch"] >= 1:
                proc.send_signal(signal.SIGKILL)
                killed_at = info
                break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read()}"
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "train_summary.json").exists()
    state = _pointer(run)
    assert 0 < state["global_step"] < STEPS

    res = run_msta_process(["train", "--resume", "--no-progress", "--set", f"run.out={run}"])
    assert res.returncode == 0, res.stderr
    assert f"global step {state['global_step']}" in res.stderr  # it really resumed from there

    w_ref, info_ref = _weights(ref)
    w_res, info_res = _weights(run)
    assert info_ref["global_step"] == info_res["global_step"] == STEPS
    assert set(w_ref) == set(w_res)
    worst = max((w_ref[k] - w_res[k]).abs().max().item() for k in w_ref)
    print(
        f"killed at global step {state['global_step']}; resumed weights vs uninterrupted: max |diff| = {worst}"
    )
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run by {worst}"
    # The weights did change during training (the comparison is not between two initialisations).
    from msta.config import load_config
    from msta.run import build_seeded_model

    init = build_seeded_model(load_config([ref / "config.yaml"])).trainable_state_dict()
    assert max((init[k] - w_ref[k]).abs().max().item() for k in w_ref) > 1e-3

    # The metrics log of the resumed run is the uninterrupted run's (entries after the checkpoint
    # were dropped and written again).
    def rows(p: Path) -> list[dict]:
        return [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]

    a, b = rows(ref), rows(run)
    assert [r["global_step"] for r in a] == [r["global_step"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for k in ("loss", "top1", "top5", "lr"):
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], abs=1e-6), (k, ra, rb)


def test_resume_refuses_a_changed_configuration(tmp_path, msta_cli):
    data = make_synth(tmp_path / "data", videos_per_class=2, val_per_class=1)
    run = tmp_path / "run"
    short = ["--set", "optim.epochs=1", "--set", "optim.batch_size=4", "--set", "loss.consistency_weight=0"]
    res = msta_cli(synth_args(data, run, *short))
    assert res.returncode == 0, res.stderr
    res = msta_cli(["train", "--resume", "--no-progress", "--set", f"run.out={run}", "--set", "optim.lr=0.5"])
    assert res.returncode == 2 and "optim.lr" in res.stderr
    res = msta_cli(synth_args(data, run, *short))
    assert res.returncode == 2 and "--resume" in res.stderr
