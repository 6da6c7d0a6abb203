"""The MSTA loss: cross-entropy plus the description consistency term."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from msta.loss import consistency_loss, description_means, msta_loss
from tests.msta.test_model import CLASSES, FRAMES, tiny_model


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_zero_when_prompts_equal_both_description_means():
    ds = _rand(5, 3, 16, seed=1)
    dt = ds[:, [2, 0, 1]] * torch.tensor([2.0, 0.5, 7.0]).view(1, 3, 1)  # same means: order/length free
    w = description_means(ds) * 3.0  # the length of w does not matter either
    assert float(consistency_loss(w, ds, dt)) == pytest.approx(0.0, abs=1e-6)
    assert float(consistency_loss(w, ds, _rand(5, 3, 16, seed=2))) > 0.1


def test_hand_computed_value():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    # class 0: spatial means point along y (cos 0), temporal along x (cos 1) -> 1
    # class 1: spatial along -y (cos -1), temporal at 45 degrees (cos 1/sqrt2) -> 3 - 1/sqrt2
    ds = torch.tensor([[[0.0, 1.0], [0.0, 5.0]], [[0.0, -1.0], [0.0, -1.0]]])
    dt = torch.tensor([[[1.0, 0.0], [3.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]]])
    expected = (1.0 + (3.0 - 1 / math.sqrt(2))) / 2
    assert float(consistency_loss(w, ds, dt)) == pytest.approx(expected, abs=1e-6)


def test_each_description_is_normalised_before_the_mean():
    # one long description must not dominate the mean
    ds = torch.tensor([[[1.0, 0.0], [0.0, 100.0]]])
    assert torch.allclose(description_means(ds), torch.tensor([[1.0, 1.0]]) / math.sqrt(2))


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[C=2, N, D=4\]"):
        consistency_loss(torch.zeros(2, 4), torch.zeros(3, 2, 4), torch.zeros(2, 2, 4))
    with pytest.raises(ValueError, match="must be"):
        consistency_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 2, 4))


def test_msta_loss_parts_and_weight():
    logits = _rand(4, 5, seed=3)
    labels = torch.tensor([0, 4, 2, 2])
    w = _rand(5, 8, seed=4)
    ds, dt = _rand(5, 2, 8, seed=5), _rand(5, 2, 8, seed=6)
    manual_ce = -torch.log_softmax(logits, dim=-1)[torch.arange(4), labels].mean()
    cc = consistency_loss(w, ds, dt)
    loss, parts = msta_loss(logits, labels, w, ds, dt, consistency_weight=0.5)
    assert torch.allclose(parts["ce"], manual_ce) and torch.allclose(parts["cc"], cc)
    assert torch.allclose(loss, manual_ce + 0.5 * cc)
    for kwargs in ({"consistency_weight": 0.0}, {"desc_spatial": None}):
        args = {
            "class_features": w,
            "desc_spatial": ds,
            "desc_temporal": dt,
            "consistency_weight": 1.0,
        } | kwargs
        loss, parts = msta_loss(logits, labels, **args)
        assert torch.allclose(loss, manual_ce) and float(parts["cc"]) == 0.0


def test_consistency_gradient_reaches_only_the_text_branch(tiny_clip_config):
    model = tiny_model(tiny_clip_config)
    w = model.encode_class_prompts(CLASSES)
    ds, dt = _rand(len(CLASSES), 2, w.shape[1], seed=7), _rand(len(CLASSES), 2, w.shape[1], seed=8)
    consistency_loss(w, ds, dt).backward()
    for name, p in model.named_parameters():
        text_branch = name.startswith("adapters.") and (".text_" in name or ".shared." in name)
        if text_branch:
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        else:
            assert p.grad is None, name


def test_consistency_pulls_the_prompt_towards_the_descriptions(tiny_clip_config):
    """A few optimizer steps on L_CC alone reduce it: the text adapters can move the prompts."""
    model = tiny_model(tiny_clip_config, "adapter.scale=0.05")
    ds = _rand(len(CLASSES), 2, 64, seed=9)
    dt = ds + 0.1 * _rand(len(CLASSES), 2, 64, seed=10)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = consistency_loss(model.encode_class_prompts(CLASSES), ds, dt)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_full_step_runs_on_a_video_batch(tiny_clip_config):
    model = tiny_model(tiny_clip_config)
    video = _rand(2, FRAMES, 3, 64, 64, seed=11)
    w = model.encode_class_prompts(CLASSES)
    logits = model(video, w)
    assert logits.shape == (2, len(CLASSES))
    loss, parts = msta_loss(logits, torch.tensor([1, 2]), w, _rand(4, 2, 64), _rand(4, 2, 64, seed=1))
    assert torch.isfinite(loss) and set(parts) == {"ce", "cc"}
    assert torch.allclose(parts["ce"], F.cross_entropy(logits, torch.tensor([1, 2])).detach())
