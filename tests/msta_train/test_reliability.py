"""Reliability of ``msta train`` / ``eval`` / ``predict``: one process per run directory, clean
stops on SIGINT/SIGTERM, checksummed checkpoints with a fallback on resume, finished runs left
alone, unavailable devices and read-only caches reported in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.descgen_helpers import immutable

from . import class_list, make_cache, make_synth, run_msta_process, start_msta_process, synth_args

SHORT = [
    "--set", "optim.epochs=2", "--set", "optim.batch_size=4", "--set", "optim.warmup_epochs=1",
    "--set", "loss.consistency_weight=0", "--set", "run.log_every_steps=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data")


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [x for x in lines if x.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def _pointer(run: Path, name: str = "last") -> dict | None:
    try:
        return json.loads((run / "checkpoints" / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _start(args: list[str]) -> subprocess.Popen:
    return start_msta_process(args, stdout=subprocess.DEVNULL)


def _wait_for(cond, proc: subprocess.Popen, timeout: float = 300) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.02)
    return False


def _train_rows(run: Path) -> list[dict]:
    try:
        text = (run / "metrics.jsonl").read_text()
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in rows if r.get("type") == "train"]


# --------------------------------------------------------------------------- checkpoint files


def _save_two(run: Path) -> None:
    from msta import checkpoint as ckpt

    for step in (1, 2):
        w = {"a": torch.full((4,), float(step))}
        info = {"epoch": 0, "step_in_epoch": step, "global_step": step}
        ckpt.save(run, w, {"state": {"global_step": step}}, info)


def test_checkpoint_manifest_detects_truncation_and_keeps_the_previous(tmp_path):
    from msta import checkpoint as ckpt

    run = tmp_path / "run"
    _save_two(run)
    last = ckpt.checkpoint_dir(run, "last")
    manifest = json.loads((last / ckpt.MANIFEST).read_text())["files"]
    assert manifest[ckpt.WEIGHTS]["size"] == (last / ckpt.WEIGHTS).stat().st_size
    assert len(manifest[ckpt.TRAINER]["sha256"]) == 64
    assert _pointer(run, "previous")["global_step"] == 1
    data = (last / ckpt.WEIGHTS).read_bytes()
    (last / ckpt.WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_weights(run, "last")
    w, _ = ckpt.load_weights(run, "previous")
    assert w["a"][0].item() == 1.0


def test_old_checkpoints_without_manifest_still_load_and_bad_ones_are_errors(tmp_path):
    from msta import checkpoint as ckpt

    run = tmp_path / "run"
    _save_two(run)
    last = ckpt.checkpoint_dir(run, "last")
    (last / ckpt.MANIFEST).unlink()
    w, info = ckpt.load_weights(run, "last")
    assert w["a"][0].item() == 2.0 and info["global_step"] == 2
    assert ckpt.load_trainer_state(run, "last")["state"]["global_step"] == 2
    (last / ckpt.TRAINER).write_bytes(b"not a torch file")
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.load_trainer_state(run, "last")


# --------------------------------------------------------------------------- devices and messages


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_unavailable_device_is_one_line(tmp_path, msta_cli):
    args = ["train", "--config", "tiny", "--no-progress", "--set", f"run.out={tmp_path / 'r'}"]
    res = msta_cli([*args, "--set", "run.device=cuda"])
    assert res.returncode == 2
    assert "cuda is not available here; available: cpu" in _one_error_line(res.stderr)
    res = msta_cli([*args, "--set", "run.device=warp9"])
    assert res.returncode == 2
    assert "unknown device 'warp9'; available: cpu" in _one_error_line(res.stderr)


def test_descriptions_directory_is_named_as_such(synth, tmp_path, msta_cli):
    args = synth_args(synth, tmp_path / "r", "--set", "optim.epochs=1", "--set", "optim.batch_size=4")
    res = msta_cli([*args, "--descriptions", str(tmp_path)])
    assert res.returncode == 2
    line = _one_error_line(res.stderr)
    assert "is a directory, not a cache file" in line and "not found" not in line


def test_predict_on_a_corrupt_video_is_one_line(tmp_path, msta_cli):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(os.urandom(3000))
    res = msta_cli(["predict", str(bad), "--classes", "a,b", "-c", "tiny"])
    assert res.returncode == 2
    line = _one_error_line(res.stderr)
    assert "bad.mp4" in line and "msta data check" not in res.stderr
    assert "warning" not in res.stderr.lower()


# --------------------------------------------------------------------------- stops, resume, finished


def _stop_at(monkeypatch, global_step: int) -> None:
    """Make the recipe see a SIGTERM right after optimizer step ``global_step``."""
    from msta.train import TrainRecipe

    orig = TrainRecipe._optimizer_step

    def step(self):
        orig(self)
        if self.state.global_step == global_step:
            self.signals.received = signal.SIGTERM

    monkeypatch.setattr(TrainRecipe, "_optimizer_step", step)


def test_resume_falls_back_to_the_previous_intact_checkpoint(synth, tmp_path, msta_cli, monkeypatch):
    from msta import checkpoint as ckpt

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _stop_at(m, 6)
        res = msta_cli(synth_args(synth, run, *SHORT, "--set", "run.save_every_steps=1"))
    assert res.returncode == 143, res.stderr
    assert "--resume" in _one_error_line(res.stderr)
    assert _pointer(run)["global_step"] == 6 and _pointer(run, "previous")["global_step"] == 5
    trainer = ckpt.checkpoint_dir(run, "last") / ckpt.TRAINER
    trainer.write_bytes(trainer.read_bytes()[:100])

    res = msta_cli(["train", "--resume", "--no-progress", "--set", f"run.out={run}"])
    assert res.returncode == 0, res.stderr
    assert "corrupt" in res.stderr and "previous checkpoint step-00000005" in res.stderr
    assert "global step 5" in res.stderr
    assert _pointer(run)["global_step"] == 8

    # msta eval on a corrupt checkpoint: one line.
    weights = ckpt.checkpoint_dir(run, "last") / ckpt.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    res = msta_cli(["eval", str(run), "--no-plots"])
    assert res.returncode == 2
    assert "corrupt" in _one_error_line(res.stderr)


def test_resume_of_a_finished_run_changes_nothing(synth, tmp_path, msta_cli):
    run = tmp_path / "run"
    res = msta_cli(synth_args(synth, run, *SHORT))
    assert res.returncode == 0, res.stderr
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    res = msta_cli(["train", "--resume", "--no-progress", "--set", f"run.out={run}"])
    assert res.returncode == 0, res.stderr
    assert "already finished" in res.stderr and "resumed" not in res.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before


# --------------------------------------------------------------------------- read-only caches


def test_read_only_cache_works_when_complete_and_fails_in_one_line_when_not(synth, tmp_path, msta_cli):
    cache = tmp_path / "ro.db"
    make_cache(cache, class_list(synth))
    args = ["--set", "optim.epochs=1", "--set", "optim.batch_size=4", "--descriptions", str(cache)]
    with immutable(cache):
        res = msta_cli(synth_args(synth, tmp_path / "r1", *args))
    assert res.returncode == 2
    assert "read-only" in _one_error_line(res.stderr)
    res = msta_cli(synth_args(synth, tmp_path / "r2", *args))  # encodes and stores them
    assert res.returncode == 0, res.stderr
    before = cache.read_bytes()
    with immutable(cache):
        res = msta_cli(synth_args(synth, tmp_path / "r3", *args))
    assert res.returncode == 0, res.stderr
    assert cache.read_bytes() == before


# --------------------------------------------------------------------------- real processes

LONG = [
    "--set", "optim.epochs=3", "--set", "optim.batch_size=4", "--set", "optim.warmup_epochs=1",
    "--set", "loss.consistency_weight=0", "--set", "run.log_every_steps=1",
]  # fmt: skip
STEPS = 3 * 4


@pytest.mark.slow
def test_second_training_process_on_the_same_run_is_refused(synth, tmp_path):
    run = tmp_path / "run"
    long = ["--set", "optim.epochs=400", "--set", "optim.batch_size=4", "--set", "loss.consistency_weight=0"]
    first = _start(synth_args(synth, run, *long))
    try:
        assert _wait_for(lambda: _train_rows(run), first), first.stderr.read() if first.poll() else ""
        res = run_msta_process(synth_args(synth, run, *long))
        assert first.poll() is None, "the first run ended before the second one started"
        assert res.returncode == 2
        line = _one_error_line(res.stderr)
        assert "in use by another training process" in line and f"pid {first.pid}" in line
        res = run_msta_process(["train", "--resume", "--no-progress", "--set", f"run.out={run}"])
        assert res.returncode == 2 and f"pid {first.pid}" in _one_error_line(res.stderr)
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 143, first.stderr.read()
    steps = [r["global_step"] for r in _train_rows(run)]
    assert steps and steps == sorted(set(steps))  # one writer
    assert "epochs: 400" in (run / "config.yaml").read_text()


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_that_resumes_exactly(synth, tmp_path):
    from msta.checkpoint import load_weights

    ref = tmp_path / "ref"
    res = run_msta_process(synth_args(synth, ref, *LONG))
    assert res.returncode == 0, res.stderr

    run = tmp_path / "stopped"
    proc = _start(synth_args(synth, run, *LONG))
    try:
        mid = _wait_for(lambda: any(r["global_step"] >= 5 for r in _train_rows(run)), proc)
        assert mid, "the run ended before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    line = _one_error_line(err)
    assert "SIGTERM" in line and "msta train --resume" in line and f"run.out={run}" in line
    state = _pointer(run)
    assert 5 <= state["global_step"] < STEPS
    assert f"global step {state['global_step']}" in line
    assert not (run / "train_summary.json").exists()

    res = run_msta_process(["train", "--resume", "--no-progress", "--set", f"run.out={run}"])
    assert res.returncode == 0, res.stderr
    assert f"global step {state['global_step']}" in res.stderr
    w_ref, info_ref = load_weights(ref)
    w_res, info_res = load_weights(run)
    assert info_ref["global_step"] == info_res["global_step"] == STEPS
    worst = max((w_ref[k] - w_res[k]).abs().max().item() for k in w_ref)
    assert worst <= 1e-6, worst


def test_a_second_signal_exits_at_once():
    code = (
        "import os, signal, sys, time\n"
        "from msta.train import StopSignals\n"
        "with StopSignals() as s:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert s.received == signal.SIGINT\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(60)\n"
        "sys.exit(0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 130, res.stderr
    assert "SIGINT again: stopping now" in res.stderr
