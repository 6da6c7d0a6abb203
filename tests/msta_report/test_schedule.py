"""The learning-rate schedules against references computed here from their formulas, at every step."""

from __future__ import annotations

import math

import pytest

from msta.config import load_config
from msta.schedule import lr_factor


def timm_reference(t: int, lr: float, lr_min: float, t_warm: int, total: int) -> float:
    if t < t_warm:
        return lr * t / t_warm
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * t / total))


def warmup_cosine_reference(t: int, lr: float, lr_min: float, t_warm: int, total: int) -> float:
    if t < t_warm:
        return lr * (t + 1) / t_warm
    return lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * (t - t_warm) / (total - t_warm)))


@pytest.mark.parametrize(
    ("kind", "reference"), [("timm", timm_reference), ("warmup_cosine", warmup_cosine_reference)]
)
def test_schedule_matches_its_formula_at_every_step(kind, reference):
    lr, ratio, steps_per_epoch, epochs, warm_epochs = 1e-3, 0.01, 7, 50, 5
    total, t_warm = steps_per_epoch * epochs, steps_per_epoch * warm_epochs
    for t in range(total):
        got = lr * lr_factor(t, t_warm, total, ratio, kind)
        assert got == pytest.approx(reference(t, lr, lr * ratio, t_warm, total), rel=1e-12, abs=1e-15), t


def test_timm_schedule_at_epoch_5_of_50_is_the_logged_value():
    steps_per_epoch = 13
    t = 5 * steps_per_epoch
    got = 1e-3 * lr_factor(t, 5 * steps_per_epoch, 50 * steps_per_epoch, 0.01, "timm")
    assert f"{got:.4e}" == "9.7577e-04"


def test_timm_schedule_differs_from_warmup_then_cosine():
    args = (200, 100, 1000, 0.01)
    assert lr_factor(*args, "timm") != pytest.approx(lr_factor(*args, "warmup_cosine"))
    assert lr_factor(0, 10, 100, 0.01, "timm") == 0.0


def test_config_schedule_and_precision():
    cfg = load_config()
    assert cfg.optim.schedule == "timm"
    assert cfg.run.precision == "bf16"
    assert load_config(["synth"]).optim.schedule == "warmup_cosine"
    paper = load_config(["paper"])
    assert paper.run.precision == "fp32" and paper.optim.schedule == "timm"
    with pytest.raises(ValueError, match="optim.schedule"):
        load_config([], ["optim.schedule=linear"])
    with pytest.raises(ValueError, match="run.precision"):
        load_config([], ["run.precision=fp16"])


@pytest.mark.parametrize(
    ("dataset", "views"), [("k400", "4x3"), ("hmdb51", "10x3"), ("ucf101", "5x3"), ("ssv2", "2x3")]
)
def test_paper_presets(dataset, views):
    cfg = load_config([dataset, f"paper-{dataset}", "fewshot"])
    assert cfg.eval.views == views
    assert (cfg.adapter.dim, cfg.adapter.start, cfg.adapter.end) == (128, 8, 12)
    o = cfg.optim
    assert (o.epochs, o.batch_size, o.lr, o.weight_decay, o.warmup_epochs) == (50, 32, 1e-3, 1e-3, 5)
    assert cfg.run.precision == "fp32"
    b2n = load_config([dataset, f"paper-{dataset}", "base2novel"])
    assert (b2n.adapter.start, b2n.optim.epochs, b2n.eval.views) == (1, 11, views)
