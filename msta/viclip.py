"""ViCLIP as a frozen video-language backbone (joint space-time attention over all frames).

Vision tower: each frame is cut into patches by a ``Conv3d`` of temporal size 1; every patch gets
the spatial positional embedding of its position and the temporal positional embedding of its
frame; one class token per video (class embedding + spatial position 0) is put in front. The
sequence is ``[cls, patches in (n t) order]``: patch-major, time-minor, ``1 + N*T`` tokens. All
blocks attend jointly over every token of every frame; the video embedding is
``ln_post(cls) @ proj``. The text tower is :class:`descgen.viclip_text.ViCLIPText`, built by
descgen's loader so ``descgen encode`` and msta use the same module and fingerprint.

Frame counts: the temporal embedding holds 8 positions. Another frame count ``T`` uses the
embedding resampled to ``T`` positions by linear interpolation over time (``align_corners=False``:
the ``T`` positions are spread over the same time span as the 8).

Frozen backbone: the original training wrapper's token dropping, drop-path and per-block
checkpointing are left out, so the output is the same in train and eval mode.

Adapters: :meth:`ViCLIPBackbone.tokens_to_grid` maps the ``(n t)`` patch tokens to a
``[B, T, 1 + N, C]`` grid. The class token (one per video, not per frame) takes slot 0 of every
frame, copied; :meth:`ViCLIPBackbone.grid_to_tokens` returns the mean of that slot over time. A
temporal convolution therefore sees the class token as a sequence that does not change over
time (zero-padded at both ends, like every other slot), and the class token receives the time
average of the result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from descgen.encoders import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM_SEED,
    EncoderSpec,
    build_viclip_text,
    load_part,
    load_viclip_state,
    tokenizer_for,
)
from descgen.viclip_text import Transformer, packed_attention
from msta.blocks import BlockHook, FrozenBackbone, add_hook_output

TEMPORAL_POSITIONS = 8


class ViCLIPVision(nn.Module):
    """ViCLIP's vision tower (parameter names as in the released weights)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        width, patch = int(cfg["width"]), int(cfg["patch_size"])
        self.image_size = int(cfg["image_size"])
        self.patch_size = patch
        self.width = width
        self.output_dim = int(cfg["output_dim"])
        grid = self.image_size // patch
        scale = width**-0.5
        self.conv1 = nn.Conv3d(3, width, kernel_size=(1, patch, patch), stride=(1, patch, patch), bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(grid * grid + 1, width))
        self.temporal_positional_embedding = nn.Parameter(torch.zeros(1, TEMPORAL_POSITIONS, width))
        nn.init.normal_(self.temporal_positional_embedding, std=0.02)
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, int(cfg["heads"]), int(cfg["layers"]))
        self.transformer.init_weights()
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, self.output_dim))

    def temporal_embedding(self, frames: int) -> Tensor:
        """[T, C]: the learned positions, resampled linearly over time when T differs from 8."""
        emb = self.temporal_positional_embedding
        if frames != emb.shape[1]:
            emb = F.interpolate(emb.transpose(1, 2), size=frames, mode="linear", align_corners=False)
            emb = emb.transpose(1, 2)
        return emb[0]

    def embed(self, video: Tensor) -> Tensor:
        """[B, T, 3, H, W] -> [B, 1 + N*T, C] tokens after ``ln_pre``."""
        if video.dim() != 5:
            raise ValueError(f"video must be [B, T, 3, H, W], got shape {tuple(video.shape)}")
        b, t = video.shape[:2]
        if video.shape[-1] != self.image_size or video.shape[-2] != self.image_size:
            raise ValueError(f"frames must be {self.image_size}x{self.image_size}, got {tuple(video.shape)}")
        x = self.conv1(video.transpose(1, 2).to(self.conv1.weight.dtype))  # [B, C, T, h, w]
        x = x.flatten(3).permute(0, 3, 2, 1)  # [B, N, T, C]
        pos = self.positional_embedding.to(x.dtype)
        x = x + pos[1:].unsqueeze(1) + self.temporal_embedding(t).to(x.dtype)
        cls = (self.class_embedding.to(x.dtype) + pos[0]).expand(b, 1, -1)
        x = torch.cat([cls, x.reshape(b, -1, x.shape[-1])], dim=1)
        return self.ln_pre(x)

    def pool(self, x: Tensor) -> Tensor:
        return self.ln_post(x[:, 0]) @ self.proj


class ViCLIP(nn.Module):
    """The two towers and the temperature (``logit scale = 1 / temp``), named as in the checkpoint."""

    def __init__(self, cfg: dict[str, Any], text: nn.Module) -> None:
        super().__init__()
        self.vision_encoder = ViCLIPVision(cfg["vision_cfg"])
        self.text_encoder = text
        self.temp = nn.Parameter(torch.tensor(0.01))


def run_block(
    blk: nn.Module, x: Tensor, mask: Tensor | None, hook: BlockHook | None, kind: str, index: int
) -> Tensor:
    """One block, plus what the hook adds (computed from the block input and its ``ln_1``)."""
    h = blk.ln_1(x)
    y = x + packed_attention(blk.attn, h, mask)
    y = y + blk.mlp(blk.ln_2(y))
    return add_hook_output(y, hook, kind, index, x, h)


class _Temp(nn.Module):
    """A view of the model's ``temp`` alone, to load it with the same key checks."""

    def __init__(self, model: ViCLIP) -> None:
        super().__init__()
        self.temp = model.temp


def create_viclip(spec: EncoderSpec, seed: int = RANDOM_SEED) -> ViCLIP:
    """A ViCLIP model (eval mode, CPU, fp32, frozen): random (seeded) or from its checkpoint."""
    state = load_viclip_state(spec)
    text = build_viclip_text(spec, seed=seed, state=state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        model = ViCLIP(spec.config, text)
    load_part(model.vision_encoder, state, "vision_encoder.", spec)
    if state is not None:
        load_part(_Temp(model), state, "", spec)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class ViCLIPBackbone(FrozenBackbone):
    """A frozen ViCLIP run block by block with adapter hooks (see the module docstring)."""

    block_fn = staticmethod(run_block)

    def __init__(self, model: ViCLIP, name: str, pretrained: str, tokenizer: Callable[..., Tensor]) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.pretrained = pretrained
        vision, text = model.vision_encoder, model.text_encoder
        self.vision_width = vision.width
        self.text_width = text.width
        self.num_vision_blocks = len(vision.transformer.resblocks)
        self.num_text_blocks = len(text.transformer.resblocks)
        self.image_size = vision.image_size
        self.context_length = text.context_length
        self.embed_dim = vision.output_dim
        self.image_mean = IMAGENET_MEAN
        self.image_std = IMAGENET_STD
        self.tokenizer = tokenizer
        self.register_buffer("logit_scale", 1.0 / model.temp.detach().clone(), persistent=False)

    @classmethod
    def create(cls, spec: EncoderSpec, seed: int = RANDOM_SEED) -> ViCLIPBackbone:
        return cls(create_viclip(spec, seed), spec.name, spec.pretrained, tokenizer_for(spec))

    def frozen_text_model(self) -> nn.Module:
        """The text module whose weights define the encoder fingerprint (as ``descgen encode``)."""
        return self.model.text_encoder

    # ----------------------------------------------------------------- layout

    def tokens_to_grid(self, x: Tensor, frames: int) -> Tensor:
        """[B, 1 + N*T, C] -> [B, T, 1 + N, C]; slot 0 is the class token, copied to every frame."""
        b, length, c = x.shape
        patches = x[:, 1:].reshape(b, (length - 1) // frames, frames, c).transpose(1, 2)
        cls = x[:, :1].unsqueeze(1).expand(b, frames, 1, c)
        return torch.cat([cls, patches], dim=2)

    def grid_to_tokens(self, g: Tensor) -> Tensor:
        """[B, T, 1 + N, C] -> [B, 1 + N*T, C]; the class token is slot 0 averaged over time."""
        b, t, length, c = g.shape
        patches = g[:, :, 1:].transpose(1, 2).reshape(b, (length - 1) * t, c)
        return torch.cat([g[:, :, 0].mean(dim=1, keepdim=True), patches], dim=1)

    # ----------------------------------------------------------------- text

    def text_cut_length(self, tokens: Tensor) -> int:
        """The shortest context giving exactly the full-context result (causal, end-token pooling)."""
        return self.model.text_encoder.cut_length(tokens)

    def _text_blocks(self) -> nn.ModuleList:
        return self.model.text_encoder.transformer.resblocks

    def _text_mask(self, length: int) -> Tensor:
        return self.model.text_encoder.attn_mask[:length, :length]

    def _embed_text(self, tokens: Tensor) -> Tensor:
        return self.model.text_encoder.embed(tokens)

    def _pool_text(self, x: Tensor, tokens: Tensor) -> Tensor:
        return self.model.text_encoder.pool(x, tokens)

    # ----------------------------------------------------------------- vision

    def encode_video(self, video: Tensor, block_hook: BlockHook | None = None) -> Tensor:
        """[B, T, 3, H, W] -> [B, embed_dim] (not normalised), joint attention over all frames."""
        vision = self.model.vision_encoder
        x = vision.embed(video)
        x = self._run_blocks(vision.transformer.resblocks, x, None, block_hook, "vision")
        return vision.pool(x)
