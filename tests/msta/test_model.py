"""The MSTA model on a tiny random-weight CLIP: exactness against open_clip, adapters, gradients."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from descgen.encoders import _hf_cached_file
from msta.backbone import BackboneError, OpenCLIPBackbone
from msta.config import Config, ConfigError, load_config
from msta.loss import msta_loss
from msta.model import MSTA, build_model, depthwise_time_conv, grad_scale

FRAMES = 4
CLASSES = ["archery", "playing the cello slowly", "a", "riding a mechanical bull at a fair"]


def tiny_config(tiny: Path, *overrides: str) -> Config:
    base = [
        f"model.backbone={tiny}",
        "model.pretrained=none",
        f"model.frames={FRAMES}",
        "adapter.start=1",
        "adapter.end=4",
        "adapter.dim=32",
    ]
    return load_config([], [*base, *overrides])


def tiny_model(tiny: Path, *overrides: str, seed: int = 1) -> MSTA:
    torch.manual_seed(seed)
    return build_model(tiny_config(tiny, *overrides))


def clip_video_embedding(model: MSTA, video: torch.Tensor) -> torch.Tensor:
    """open_clip's own encode_image per frame, averaged over frames."""
    b, t = video.shape[:2]
    with torch.no_grad():
        return model.backbone.clip.encode_image(video.flatten(0, 1)).view(b, t, -1).mean(1)


@pytest.fixture(scope="module")
def video() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, FRAMES, 3, 64, 64, generator=g)


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("overrides", [("adapter.branches=none",), ("adapter.scale=0",)])
def test_adapters_off_or_zero_scale_match_open_clip(tiny_clip_config, video, overrides):
    model = tiny_model(tiny_clip_config, *overrides)
    clip = model.backbone.clip
    tokens = model.tokenize_classes(CLASSES)
    with torch.no_grad():
        ours_t = model.encode_class_prompts(CLASSES)
        ref_t = clip.encode_text(tokens)
        ours_v = model.encode_video(video)
    ref_v = clip_video_embedding(model, video)
    assert (ours_t - ref_t).abs().max() < 1e-5
    assert (ours_v - ref_v).abs().max() < 1e-5


def test_adapters_on_change_both_embeddings(tiny_clip_config, video):
    model = tiny_model(tiny_clip_config)
    clip = model.backbone.clip
    tokens = model.tokenize_classes(CLASSES)
    with torch.no_grad():
        ours_t = model.encode_class_prompts(CLASSES)
        ours_v = model.encode_video(video)
        ref_t = clip.encode_text(tokens)
    ref_v = clip_video_embedding(model, video)
    assert rel_diff(ours_t, ref_t) > 1e-4
    assert rel_diff(ours_v, ref_v) > 1e-4


def test_text_context_cut_is_exact(tiny_clip_config):
    model = tiny_model(tiny_clip_config)
    tokens = model.tokenize_classes(CLASSES)
    backbone = model.backbone
    eot = tokens.argmax(dim=-1)
    cut = backbone.text_cut_length(tokens)
    assert cut == int(eot.max()) + 1 < tokens.shape[1]
    with torch.no_grad():
        # without adapters: open_clip's own encode_text on the full 77-token context
        plain = backbone.encode_text_tokens(tokens, None, cut=True)
        assert (plain - backbone.clip.encode_text(tokens)).abs().max() < 1e-5
        # with adapters: the cut equals running the full context through the same hooks
        full = backbone.encode_text_tokens(tokens, model._text_hook, cut=False)
        short = backbone.encode_text_tokens(tokens, model._text_hook, cut=True)
    assert (full - short).abs().max() < 1e-5


def test_model_follows_dtype_and_device_moves(tiny_clip_config, video):
    """Moving the model (here to float64) moves every tensor the encoders use, buffers included."""
    model = tiny_model(tiny_clip_config, "adapter.branches=none").double()
    clip = model.backbone.clip
    tokens = model.tokenize_classes(CLASSES)
    with torch.no_grad():
        ours_t = model.encode_text(tokens)
        ours_v = model.encode_video(video.double())
        ref_v = clip.encode_image(video.double().flatten(0, 1)).view(2, FRAMES, -1).mean(1)
        assert ours_t.dtype == torch.float64 and ours_v.dtype == torch.float64
        assert (ours_t - clip.encode_text(tokens)).abs().max() < 1e-10
    assert (ours_v - ref_v).abs().max() < 1e-10
    assert model.logit_scale.dtype == torch.float64
    assert model.backbone._text["attn_mask"].dtype == torch.float64  # the moved buffer, not a stale copy


def test_frozen_text_prefix_cache_is_exact(tiny_clip_config):
    model = tiny_model(tiny_clip_config, "adapter.start=3")
    tokens = model.tokenize_classes(CLASSES)
    model.cache_text_prefix = False
    reference = model.encode_text(tokens)
    assert not model._text_prefix_cache
    model.cache_text_prefix = True
    first = model.encode_text(tokens)
    assert len(model._text_prefix_cache) == 1
    second = model.encode_text(tokens)
    assert torch.equal(first, reference) and torch.equal(second, reference)
    # gradients still reach every text adapter
    second.square().sum().backward()
    assert all(p.grad is not None for n, p in model.adapters.named_parameters() if "text_" in n)
    # a different class list has its own entry; training the backbone bypasses the cache
    model.encode_class_prompts(CLASSES[:2])
    assert len(model._text_prefix_cache) == 2
    model.set_backbone_trainable(True)
    w = model.encode_text(tokens)
    assert not model._text_prefix_cache and torch.equal(w, reference)
    w.sum().backward()
    assert model.backbone.clip.token_embedding.weight.grad is not None


def test_frozen_text_backbone_is_plain_open_clip(tiny_clip_config):
    model = tiny_model(tiny_clip_config)
    frozen = model.frozen_text_backbone()
    assert frozen.model_name == "clip-tiny" and frozen.pretrained == "none"
    tokens = model.tokenize_classes(CLASSES)
    reference = tiny_model(tiny_clip_config, "adapter.branches=none")
    with torch.no_grad():
        assert torch.equal(frozen.model.encode_text(tokens), reference.backbone.clip.encode_text(tokens))
        assert rel_diff(model.encode_text(tokens), frozen.model.encode_text(tokens)) > 1e-4


def test_random_backbone_weights_are_reproducible(tiny_clip_config):
    a = tiny_model(tiny_clip_config, seed=1).backbone.clip.state_dict()
    b = tiny_model(tiny_clip_config, seed=2).backbone.clip.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- structure


def expected_trainable(wt: int, wv: int, d: int, layers: int, *, temporal=True, shared=True, branches="both"):
    text = (wt * d + d) + (d * wt + wt)
    vid = (wv * d + d) + (d * wv + wv) + ((wv * 3 + wv) if temporal else 0)
    proj = d * d + d
    per = {"both": text + vid + proj * (1 if shared else 2), "text": text + proj, "video": vid + proj}[
        branches
    ]
    return layers * per


@pytest.mark.parametrize(
    ("overrides", "kwargs"),
    [
        ((), {}),
        (("adapter.temporal=false",), {"temporal": False}),
        (("adapter.shared=false",), {"shared": False}),
        (("adapter.branches=text",), {"branches": "text"}),
        (("adapter.branches=video",), {"branches": "video"}),
        (("adapter.start=2", "adapter.end=3", "adapter.dim=48"), {}),
    ],
)
def test_parameter_counts_follow_the_formula(tiny_clip_config, overrides, kwargs):
    model = tiny_model(tiny_clip_config, *overrides)
    cfg = model.adapter_cfg
    layers = cfg.end - cfg.start + 1
    trainable, total = model.num_parameters()
    assert trainable == expected_trainable(64, 96, cfg.dim, layers, **kwargs)
    backbone_total = sum(p.numel() for p in model.backbone.parameters())
    assert total == backbone_total + trainable
    assert all(not p.requires_grad for p in model.backbone.parameters())


def test_adapters_off_has_nothing_to_train(tiny_clip_config):
    model = tiny_model(tiny_clip_config, "adapter.branches=none")
    assert model.num_parameters()[0] == 0 and len(model.adapters) == 0


def test_shared_projection_is_one_module_per_layer(tiny_clip_config):
    model = tiny_model(tiny_clip_config)
    layer = model.adapters["2"]
    assert layer.is_shared and not hasattr(layer, "text_shared") and not hasattr(layer, "video_shared")
    assert layer.shared is not model.adapters["3"].shared
    unshared = tiny_model(tiny_clip_config, "adapter.shared=false").adapters["2"]
    assert unshared.text_shared is not unshared.video_shared


def test_temporal_conv_is_depthwise_over_time(tiny_clip_config):
    conv = tiny_model(tiny_clip_config).adapters["1"].video_tconv
    assert conv.groups == 32 and conv.in_channels == 32 and conv.out_channels == 96
    assert conv.kernel_size == (3, 1) and conv.padding == (1, 0)
    assert sum(p.numel() for p in conv.parameters()) == 96 * 3 + 96


def test_kaiming_fan_out_init_and_zero_biases(tiny_clip_config):
    torch.manual_seed(0)
    model = build_model(tiny_config(tiny_clip_config, "adapter.dim=32", "adapter.start=1", "adapter.end=4"))
    weights = {"down": [], "conv": []}
    for name, p in model.adapters.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
        elif "video_down" in name:
            weights["down"].append(p.detach().flatten())
        elif "video_tconv" in name:
            weights["conv"].append(p.detach().flatten())
    # Linear(96 -> 32): fan_out 32; depthwise conv 96 outputs x kernel 3: fan_out 288
    for key, fan_out in (("down", 32), ("conv", 96 * 3)):
        w = torch.cat(weights[key])
        expected = math.sqrt(2.0 / fan_out)
        assert abs(float(w.std()) / expected - 1) < 0.1, key
        assert abs(float(w.mean())) < 0.1 * expected, key


def test_bad_adapter_settings_are_config_errors(tiny_clip_config):
    with pytest.raises(ConfigError, match="beyond the 4 blocks"):
        build_model(tiny_config(tiny_clip_config, "adapter.end=5"))
    with pytest.raises(ConfigError, match="must divide the vision width"):
        build_model(tiny_config(tiny_clip_config, "adapter.dim=64"))
    # without the temporal convolution any width works
    build_model(tiny_config(tiny_clip_config, "adapter.dim=64", "adapter.temporal=false"))
    with pytest.raises(ConfigError, match="input_size"):
        build_model(tiny_config(tiny_clip_config, "data.input_size=224"))


def test_unknown_backbone_and_weights_fail_clearly(tiny_clip_config, tmp_path):
    with pytest.raises(BackboneError, match="unknown backbone"):
        OpenCLIPBackbone.create("ViT-Q-99", "none")
    with pytest.raises(BackboneError, match="neither a file nor a known tag"):
        OpenCLIPBackbone.create(str(tiny_clip_config), "openai")
    with pytest.raises(BackboneError, match="does not exist"):
        OpenCLIPBackbone.create(str(tmp_path / "missing.json"), "none")
    bad = tmp_path / "bad.json"
    bad.write_text('{"embed_dim": 8}')
    with pytest.raises(BackboneError, match="not an open_clip model config"):
        OpenCLIPBackbone.create(str(bad), "none")
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError, match="cannot build backbone"):
        OpenCLIPBackbone.create(str(tiny_clip_config), str(broken))


def test_uncached_tag_fails_at_once_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from open_clip.pretrained import get_pretrained_cfg

    if _hf_cached_file(get_pretrained_cfg("ViT-B-16", "openai")["hf_hub"]):
        pytest.skip("ViT-B-16/openai weights are cached on this machine")
    import time

    start = time.monotonic()
    with pytest.raises(
        BackboneError, match=r"not in the local cache and cannot be downloaded \(HF_HUB_OFFLINE is set\)"
    ):
        OpenCLIPBackbone.create("ViT-B-16", "openai")
    assert time.monotonic() - start < 5


def test_local_checkpoint_loads(tiny_clip_config, tmp_path):
    source = tiny_model(tiny_clip_config, seed=3)
    with torch.no_grad():
        for p in source.backbone.clip.parameters():
            p.mul_(1.5)
    path = tmp_path / "tiny.pt"
    torch.save(source.backbone.clip.state_dict(), path)
    loaded = build_model(tiny_config(tiny_clip_config, f"model.pretrained={path}"))
    assert loaded.backbone.pretrained == str(path)
    for k, v in source.backbone.clip.state_dict().items():
        assert torch.equal(v, loaded.backbone.clip.state_dict()[k]), k


# --------------------------------------------------------------------------- gradients


def _training_step_grads(model: MSTA, video: torch.Tensor):
    w = model.encode_class_prompts(CLASSES)
    logits = model(video, w)
    g = torch.Generator().manual_seed(5)
    ds = torch.randn(len(CLASSES), 2, w.shape[1], generator=g)
    dt = torch.randn(len(CLASSES), 2, w.shape[1], generator=g)
    loss, parts = msta_loss(logits, torch.tensor([0, 2]), w, ds, dt, consistency_weight=1.0)
    loss.backward()
    return loss, parts


def test_only_adapters_get_gradients_and_backbone_stays_put(tiny_clip_config, video):
    model = tiny_model(tiny_clip_config)
    model.train()
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    adapters_before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    _, parts = _training_step_grads(model, video)
    assert parts["cc"] > 0 and parts["ce"] > 0
    for name, p in model.named_parameters():
        if name.startswith("adapters."):
            assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
        else:
            assert p.grad is None, name
    opt.step()
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    changed = [k for k, v in model.trainable_state_dict().items() if not torch.equal(v, adapters_before[k])]
    assert len(changed) == len(adapters_before)
    assert not model.backbone.training  # the frozen backbone always runs in eval mode


def test_grad_scale_op():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = grad_scale(x, 0.25)
    assert torch.equal(y, x)
    (y * torch.tensor([4.0, 8.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 2.0]))


def test_gradient_scaling_property(tiny_clip_config, video):
    lam = 0.005
    on = tiny_model(tiny_clip_config, f"adapter.scale={lam}", "adapter.grad_scale=true")
    off = tiny_model(tiny_clip_config, f"adapter.scale={lam}", "adapter.grad_scale=false", seed=9)
    off.load_trainable_state_dict(on.trainable_state_dict())
    results = {}
    for key, model in (("on", on), ("off", off)):
        v = video.clone().requires_grad_(True)
        w = model.encode_class_prompts(CLASSES)
        logits = model(v, w)
        ds = torch.ones(len(CLASSES), 2, w.shape[1])
        loss, _ = msta_loss(logits, torch.tensor([1, 3]), w, ds, ds.flip(-1), consistency_weight=1.0)
        loss.backward()
        results[key] = (
            logits.detach(),
            v.grad,
            {k: p.grad for k, p in model.named_parameters() if p.requires_grad},
        )
    logits_on, vgrad_on, grads_on = results["on"]
    logits_off, vgrad_off, grads_off = results["off"]
    assert torch.allclose(logits_on, logits_off, atol=1e-6)
    # the gradient reaching the input is the true one in both cases
    assert rel_diff(vgrad_on, vgrad_off) < 1e-4
    # adapter parameters get gradients as if the output were not scaled by lambda
    for k in grads_on:
        assert rel_diff(grads_on[k] * lam, grads_off[k]) < 1e-4, k
        assert float(grads_on[k].abs().max()) > 10 * float(grads_off[k].abs().max()), k


def test_grad_checkpointing_gives_the_same_gradients(tiny_clip_config, video):
    plain = tiny_model(tiny_clip_config)
    ckpt = tiny_model(tiny_clip_config, "run.grad_checkpointing=true", seed=4)
    ckpt.load_trainable_state_dict(plain.trainable_state_dict())
    assert ckpt.backbone.grad_checkpointing
    _training_step_grads(plain, video)
    _training_step_grads(ckpt, video)
    for (k, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters(), strict=True):
        if a.requires_grad:
            assert rel_diff(b.grad, a.grad) < 1e-5, k


# --------------------------------------------------------------------------- temporal branch


def test_frame_order_matters_only_with_the_temporal_branch(tiny_clip_config, video):
    reversed_video = video.flip(1)
    with torch.no_grad():
        on = tiny_model(tiny_clip_config, "adapter.scale=0.5", "adapter.temporal=true")
        a, b = on.encode_video(video), on.encode_video(reversed_video)
        assert rel_diff(a, b) > 1e-3
        off = tiny_model(tiny_clip_config, "adapter.scale=0.5", "adapter.temporal=false")
        a, b = off.encode_video(video), off.encode_video(reversed_video)
        assert rel_diff(a, b) < 1e-5


def test_channels_last_time_conv_equals_conv2d(tiny_clip_config):
    conv = tiny_model(tiny_clip_config).adapters["2"].video_tconv
    with torch.no_grad():
        conv.bias.normal_()
    g = torch.randn(3, FRAMES, 7, 32, generator=torch.Generator().manual_seed(3), requires_grad=True)
    ours = depthwise_time_conv(g, conv.weight, conv.bias)
    reference = conv(g.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert ours.shape == (3, FRAMES, 7, 96)
    assert torch.allclose(ours, reference, atol=1e-5)
    upstream = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, [g, conv.weight, conv.bias], upstream)
    ref_grads = torch.autograd.grad(reference, [g, conv.weight, conv.bias], upstream)
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4)


def test_temporal_conv_mixes_neighbouring_frames_only(tiny_clip_config):
    """Changing frame 0 changes the adapter output of frames 0 and 1 only (kernel 3, padding 1)."""
    model = tiny_model(tiny_clip_config)
    layer = model.adapters["1"]
    g = torch.Generator().manual_seed(2)
    h = torch.randn(2 * FRAMES, 5, 96, generator=g)
    h2 = h.clone()
    h2[0] += 1.0  # video 0, frame 0
    with torch.no_grad():
        a = layer.video_forward(h, model.backbone, FRAMES).view(2, FRAMES, 5, 96)
        b = layer.video_forward(h2, model.backbone, FRAMES).view(2, FRAMES, 5, 96)
    changed = (a - b).abs().amax(dim=(2, 3)) > 0
    assert changed.tolist() == [[True, True, False, False], [False, False, False, False]]


def test_video_embedding_is_the_unnormalised_frame_mean(tiny_clip_config, video):
    model = tiny_model(tiny_clip_config)
    with torch.no_grad():
        frames = model.backbone.encode_frames(video.flatten(0, 1), model._video_hook(FRAMES))
        emb = model.encode_video(video)
        logits = model(video, model.encode_class_prompts(CLASSES))
        w = F.normalize(model.encode_class_prompts(CLASSES), dim=-1)
    assert torch.allclose(emb, frames.view(2, FRAMES, -1).mean(1), atol=1e-6)
    assert not torch.allclose(emb.norm(dim=-1), torch.ones(2))
    expected = model.logit_scale * F.normalize(emb, dim=-1) @ w.T
    assert torch.allclose(logits, expected, atol=1e-4)


# --------------------------------------------------------------------------- state


def test_trainable_state_round_trip(tiny_clip_config, video):
    a = tiny_model(tiny_clip_config, seed=1)
    b = tiny_model(tiny_clip_config, seed=2)
    sd = a.trainable_state_dict()
    assert sd and all(k.startswith("adapters.") for k in sd)
    with torch.no_grad():
        assert rel_diff(a.encode_video(video), b.encode_video(video)) > 1e-5
        b.load_trainable_state_dict(sd)
        assert torch.equal(a.encode_video(video), b.encode_video(video))
    other = tiny_model(tiny_clip_config, "adapter.temporal=false")
    with pytest.raises(ValueError, match="missing|unexpected"):
        other.load_trainable_state_dict(sd)
    wrong = dict(sd)
    wrong["adapters.1.shared.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="shape"):
        b.load_trainable_state_dict(wrong)


def test_full_fine_tuning_switch(tiny_clip_config):
    model = tiny_model(tiny_clip_config, "adapter.branches=none")
    model.set_backbone_trainable(True)
    trainable, total = model.num_parameters()
    assert trainable == total
    model.set_backbone_trainable(False)
    assert model.num_parameters()[0] == 0
