"""ViCLIP backbone: an independent reference forward on released-layout weights, the checkpoint
checks, the adapter layout, frame counts, and the shared text encoder with ``descgen encode``."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from descgen.encoders import SHIPPED_MODELS
from msta.backbone import BackboneError, create_backbone
from msta.config import load_config
from msta.model import MSTA, build_model

TINY = json.loads((SHIPPED_MODELS / "viclip-tiny.json").read_text())


# --------------------------------------------------------------------------- reference


def released_state(cfg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under the key names and shapes of the released checkpoints."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, std=0.05, base=0.0):
        return base + std * torch.randn(*shape, generator=g)

    v, t = cfg["vision_cfg"], cfg["text_cfg"]
    grid = v["image_size"] // v["patch_size"]
    sd = {
        "vision_encoder.conv1.weight": rnd(v["width"], 3, 1, v["patch_size"], v["patch_size"]),
        "vision_encoder.class_embedding": rnd(v["width"], std=0.5),
        "vision_encoder.positional_embedding": rnd(grid * grid + 1, v["width"], std=0.5),
        "vision_encoder.temporal_positional_embedding": rnd(1, 8, v["width"], std=0.5),
        "vision_encoder.proj": rnd(v["width"], v["output_dim"], std=0.2),
        "text_encoder.token_embedding.weight": rnd(t["vocab_size"], t["width"], std=0.5),
        "text_encoder.positional_embedding": rnd(t["context_length"], t["width"], std=0.5),
        "text_encoder.text_projection": rnd(t["width"], t["output_dim"], std=0.2),
        "temp": torch.tensor(0.02),
    }
    for tower, c, lns in (("vision_encoder", v, ("ln_pre", "ln_post")), ("text_encoder", t, ("ln_final",))):
        w = c["width"]
        for ln in lns:
            sd[f"{tower}.{ln}.weight"] = rnd(w, std=0.1, base=1.0)
            sd[f"{tower}.{ln}.bias"] = rnd(w, std=0.1)
        for i in range(c["layers"]):
            p = f"{tower}.transformer.resblocks.{i}."
            sd[p + "attn.in_proj_weight"] = rnd(3 * w, w, std=w**-0.5)
            sd[p + "attn.in_proj_bias"] = rnd(3 * w)
            sd[p + "attn.out_proj.weight"] = rnd(w, w, std=w**-0.5)
            sd[p + "attn.out_proj.bias"] = rnd(w)
            sd[p + "mlp.c_fc.weight"] = rnd(4 * w, w, std=w**-0.5)
            sd[p + "mlp.c_fc.bias"] = rnd(4 * w)
            sd[p + "mlp.c_proj.weight"] = rnd(w, 4 * w, std=(4 * w) ** -0.5)
            sd[p + "mlp.c_proj.bias"] = rnd(w)
            for ln in ("ln_1", "ln_2"):
                sd[p + ln + ".weight"] = rnd(w, std=0.1, base=1.0)
                sd[p + ln + ".bias"] = rnd(w, std=0.1)
    return sd


def ref_ln(x, sd, p):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * sd[p + ".weight"] + sd[p + ".bias"]


def ref_block(x, sd, p, heads, mask=None):
    n, length, w = x.shape
    dh = w // heads
    h = ref_ln(x, sd, p + "ln_1")
    qkv = h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]
    q, k, v = (z.reshape(n, length, heads, dh).transpose(1, 2) for z in qkv.split(w, dim=-1))
    scores = q @ k.transpose(-1, -2) / math.sqrt(dh)
    if mask is not None:
        scores = scores + mask
    o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, w)
    x = x + o @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    m = ref_ln(x, sd, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    m = m * torch.sigmoid(1.702 * m)
    return x + m @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def ref_video(sd, cfg, video):
    """[B, T, 3, H, W] -> [B, D], written from the architecture description with plain tensor ops."""
    c = cfg["vision_cfg"]
    b, t, _, hh, ww = video.shape
    ps, w = c["patch_size"], c["width"]
    gh, gw = hh // ps, ww // ps
    kernel = sd["vision_encoder.conv1.weight"].reshape(w, 3 * ps * ps)
    pos = sd["vision_encoder.positional_embedding"]
    temporal = sd["vision_encoder.temporal_positional_embedding"][0]
    tokens = [sd["vision_encoder.class_embedding"].expand(b, w) + pos[0]]
    for n in range(gh * gw):  # patch-major, time-minor
        y, x = divmod(n, gw)
        for f in range(t):
            patch = video[:, f, :, y * ps : (y + 1) * ps, x * ps : (x + 1) * ps].reshape(b, -1)
            tokens.append(patch @ kernel.T + pos[1 + n] + temporal[f])
    x = ref_ln(torch.stack(tokens, 1), sd, "vision_encoder.ln_pre")
    for i in range(c["layers"]):
        x = ref_block(x, sd, f"vision_encoder.transformer.resblocks.{i}.", c["heads"])
    return ref_ln(x[:, 0], sd, "vision_encoder.ln_post") @ sd["vision_encoder.proj"]


def ref_text(sd, cfg, tokens):
    c = cfg["text_cfg"]
    length = tokens.shape[1]
    x = sd["text_encoder.token_embedding.weight"][tokens] + sd["text_encoder.positional_embedding"][:length]
    mask = torch.full((length, length), float("-inf")).triu(1)
    for i in range(c["layers"]):
        x = ref_block(x, sd, f"text_encoder.transformer.resblocks.{i}.", c["heads"], mask)
    x = ref_ln(x, sd, "text_encoder.ln_final")
    return x[torch.arange(len(tokens)), tokens.argmax(-1)] @ sd["text_encoder.text_projection"]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    sd = released_state(TINY)
    path = tmp_path_factory.mktemp("viclip") / "viclip-tiny.pth"
    torch.save({"model": sd}, path)
    return sd, path


@pytest.fixture(scope="module")
def loaded(released):
    return create_backbone("viclip-tiny", str(released[1]))


# --------------------------------------------------------------------------- tests


def test_video_and_text_match_the_reference(released, loaded):
    sd, _ = released
    video = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = loaded.encode_video(video)
        ref = ref_video(sd, TINY, video)
        assert rel_err(got, ref) < 1e-4
        flipped = loaded.encode_video(video.flip(1))
        assert rel_err(flipped, ref_video(sd, TINY, video.flip(1))) < 1e-4
        assert rel_err(flipped, got) > 1e-3  # frame order matters
        tokens = loaded.tokenizer(["a person jumping", "someone is playing the violin on a stage", ""])
        assert tokens.shape == (3, 32)
        assert rel_err(loaded.encode_text_tokens(tokens), ref_text(sd, TINY, tokens)) < 1e-4
    assert loaded.logit_scale.item() == pytest.approx(50.0)
    assert loaded.image_mean == (0.485, 0.456, 0.406) and loaded.image_std == (0.229, 0.224, 0.225)


def test_long_text_keeps_the_end_token(loaded):
    tokens = loaded.tokenizer(["word " * 100])
    assert tokens.shape == (1, 32) and tokens[0, -1].item() == tokens.max().item()


def test_safetensors_with_the_same_keys(released, loaded, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in released[0].items()}, str(path))
    other = create_backbone("viclip-tiny", str(path))
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, other.state_dict()[k]), k


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("vision_encoder.temporal_positional_embedding", "drop"),
        ("text_encoder.transformer.resblocks.1.mlp.c_fc.weight", "shape"),
        ("temp", "drop"),
    ],
)
def test_bad_checkpoint_names_the_key(released, tmp_path, key, change):
    sd = dict(released[0])
    if change == "drop":
        del sd[key]
    else:
        sd[key] = sd[key][:, :-1]
    path = tmp_path / "bad.pth"
    torch.save({"model": sd}, path)
    with pytest.raises(BackboneError) as err:
        create_backbone("viclip-tiny", str(path))
    message = str(err.value)
    assert key in message and "\n" not in message
    assert ("has no key" in message) if change == "drop" else ("has shape" in message)


def test_train_mode_equals_eval_mode_and_frame_counts(loaded):
    model = MSTA(loaded, load_config([], ["adapter.dim=16", "adapter.start=1", "adapter.end=3"]).adapter)
    with torch.no_grad():
        for p in model.adapters.parameters():
            p.normal_(0, 0.1)
    video = torch.randn(2, 8, 3, 32, 32)
    model.train()
    with torch.no_grad():
        train_out = model.encode_video(video)
        model.eval()
        assert torch.equal(train_out, model.encode_video(video))
        assert model.encode_video(torch.randn(1, 16, 3, 32, 32)).shape == (1, 32)
        assert model.encode_video(torch.randn(1, 1, 3, 32, 32)).shape == (1, 32)
    emb = loaded.model.vision_encoder.temporal_embedding(8)
    assert torch.equal(emb, loaded.model.vision_encoder.temporal_positional_embedding[0])
    assert loaded.model.vision_encoder.temporal_embedding(16).shape == emb.shape[:0] + (16, emb.shape[1])


def test_adapters_train_through_joint_attention_with_checkpointing(loaded):
    model = MSTA(loaded, load_config([], ["adapter.dim=16", "adapter.start=2", "adapter.end=3"]).adapter)
    video = torch.randn(2, 8, 3, 32, 32)
    tokens = loaded.tokenizer(["a", "b c"])
    outs = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        loss = model.encode_video(video).square().sum() + model.encode_text(tokens).square().sum()
        loss.backward()
        outs.append({k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad})
    assert all(g.abs().sum() > 0 for g in outs[0].values())
    for k in outs[0]:
        assert torch.allclose(outs[0][k], outs[1][k], rtol=1e-4, atol=1e-6), k
    model.set_grad_checkpointing(False)


def test_grid_layout_is_patch_major_time_minor(loaded):
    b, n, t, c = 2, 4, 8, 3
    x = torch.randn(b, 1 + n * t, c)
    g = loaded.tokens_to_grid(x, t)
    assert g.shape == (b, t, 1 + n, c)
    assert torch.equal(g[:, 5, 1 + 3], x[:, 1 + 3 * t + 5])  # patch 3 of frame 5 (slot 0: class token)
    assert torch.equal(g[:, 2, 0], x[:, 0])  # the class token in every frame
    assert torch.allclose(loaded.grid_to_tokens(g), x, atol=1e-6)


def test_descgen_encode_and_msta_share_the_text_encoder(released, loaded):
    from descgen.encode import TextEncoder, encode_texts, load_text_encoder

    texts = ["a person jumping", "someone is playing the violin", "word " * 50]
    enc = load_text_encoder("viclip-tiny", str(released[1]))
    model = MSTA(loaded, load_config([], ["adapter.branches=none"]).adapter)
    frozen = model.frozen_text_backbone()
    mine = TextEncoder.from_model(frozen.model, model.tokenizer, frozen.model_name, frozen.pretrained)
    assert enc.fingerprint == mine.fingerprint and enc.fingerprint.startswith("viclip-tiny@")
    assert enc.context_length == 32 and enc.dim == 32
    a, b = encode_texts(enc, texts), encode_texts(mine, texts)
    assert torch.equal(a, b)
    with torch.no_grad():
        assert torch.allclose(a, loaded.encode_text_tokens(loaded.tokenizer(texts)), rtol=1e-5, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        random = load_text_encoder("viclip-tiny", "none")
    assert random.fingerprint != enc.fingerprint
    assert (
        random.fingerprint
        == TextEncoder.from_model(
            create_backbone("viclip-tiny", "none").frozen_text_model(),
            random.tokenizer,
            "viclip-tiny",
            "none",
        ).fingerprint
    )


def test_context_length_follows_the_encoder(tiny_clip_config):
    from descgen.encoders import context_length

    assert context_length("viclip-b16") == 32
    assert context_length("clip-tiny") == 77
    assert context_length(str(tiny_clip_config)) == 77


@pytest.fixture(scope="module")
def b16():
    return create_backbone("viclip-b16", "none")


def test_viclip_b16_shape_and_adapter_counts(b16):
    assert sum(p.numel() for p in b16.parameters()) == 149_603_841
    assert (b16.vision_width, b16.text_width, b16.num_vision_blocks, b16.embed_dim) == (768, 512, 12, 512)
    for sets, expected in (
        (["adapter.dim=128", "adapter.start=8", "adapter.end=12"], 1_744_000),
        (["adapter.dim=256", "adapter.start=1", "adapter.end=12"], 8_712_192),
    ):
        model = MSTA(b16, load_config([], sets).adapter)
        trainable, total = model.num_parameters()
        assert (trainable, total) == (expected, 149_603_841 + expected)


def test_build_model_and_preset_use_the_factory():
    cfg = load_config(["viclip-tiny"], ["adapter.dim=16", "adapter.start=1", "adapter.end=2"])
    model = build_model(cfg)
    assert type(model.backbone).__name__ == "ViCLIPBackbone"
    assert model.input_stats == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert model.image_size == 32
    with torch.no_grad():
        logits = model(torch.randn(1, cfg.model.frames, 3, 32, 32), model.encode_class_prompts(["a", "b"]))
    assert logits.shape == (1, 2)
    assert F.softmax(logits, -1).sum().item() == pytest.approx(1.0)
