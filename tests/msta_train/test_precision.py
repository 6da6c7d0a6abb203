"""``run.precision`` decides the autocast context of training, evaluation and prediction alike, so a
run trained in fp32 is also validated and scored in fp32 (checked on the CPU by recording what the
helper is asked for)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import pytest
import torch

from msta import evaluate, predict, train
from msta.run import autocast

from . import make_synth, synth_args


def _quiet_autocast(device, precision):
    with warnings.catch_warnings():  # a CUDA autocast built on a machine without CUDA warns
        warnings.simplefilter("ignore")
        return autocast(device, precision)


def test_bf16_autocast_only_on_cuda_with_bf16():
    ctx = _quiet_autocast("cuda", "bf16")
    assert isinstance(ctx, torch.autocast)
    assert ctx.device == "cuda" and ctx.fast_dtype == torch.bfloat16
    assert isinstance(_quiet_autocast(torch.device("cuda", 0), "bf16"), torch.autocast)
    for device, precision in [("cuda", "fp32"), ("cpu", "bf16"), ("cpu", "fp32")]:
        ctx = _quiet_autocast(torch.device(device), precision)
        assert isinstance(ctx, contextlib.nullcontext), (device, precision)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return make_synth(tmp_path_factory.mktemp("synth") / "data", videos_per_class=1, val_per_class=1)


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The precision of every autocast context that training, evaluation and prediction ask for."""
    seen: list[str] = []

    def record(device, precision):
        seen.append(precision)
        return contextlib.nullcontext()

    for module in (train, evaluate, predict):
        monkeypatch.setattr(module, "autocast", record)
    return seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero_shot_evaluation_and_prediction_use_the_configured_precision(synth, calls, precision):
    over = [f"data.root={synth}", "run.device=cpu", f"run.precision={precision}"]
    evaluate.evaluate_zero_shot(
        ["synth"], over, splits=[str(synth / "val.txt")], classes=str(synth / "classes.csv"), root=str(synth)
    )
    assert len(calls) == 2  # the class weights, then the videos
    video = synth / "videos" / "val" / "left_to_right_000.mp4"
    predict.predict(video, classes="a dog,a cat", configs=["synth"], overrides=over)
    assert len(calls) == 3 and set(calls) == {precision}


def test_a_fp32_run_is_validated_and_evaluated_in_fp32(synth, calls, tmp_path, msta_cli):
    run = tmp_path / "run"
    short = ["optim.epochs=1", "optim.batch_size=4", "optim.warmup_epochs=0", "loss.consistency_weight=0"]
    args = synth_args(synth, run, *(x for s in [*short, "run.precision=fp32"] for x in ("--set", s)))
    res = msta_cli(args)
    assert res.returncode == 0, res.stderr
    assert calls and set(calls) == {"fp32"}  # training steps and the validation after the epoch
    calls.clear()
    evaluate.evaluate_run(run, plots=False, progress=False)  # the precision saved with the run
    assert calls and set(calls) == {"fp32"}
    calls.clear()
    evaluate.evaluate_run(run, plots=False, progress=False, overrides=["run.precision=bf16"])
    assert calls and set(calls) == {"bf16"}
