"""The MSTA model: a frozen video-language backbone with multimodal spatio-temporal adapters.

Per adapted block ``l`` (blocks ``adapter.start..adapter.end``, numbered from 1) there is one
:class:`LayerAdapter` holding

* text:  ``text_down = Linear(text_width, d)``, ``text_up = Linear(d, text_width)``;
* video: ``video_down = Linear(vision_width, d)``, ``video_up = Linear(d, vision_width)`` and
  ``video_tconv``: a depthwise convolution over time only (kernel 3, padding 1, ``d`` input
  channels, ``vision_width`` output channels, ``groups = d``, with bias);
* ``shared = Linear(d, d)``: one module used by both branches of the layer (with
  ``adapter.shared: false`` each branch has its own, ``text_shared`` / ``video_shared``).

In block ``l``, with the block's own frozen ``ln_1``::

    h = relu(shared(relu(down(ln_1(x)))))
    a = up(h)                                  # text
    a = up_v(h) + tconv_over_time(h)           # video
    x = x + attn(ln_1(x));  x = x + mlp(ln_2(x)) + lambda * a

With gradient scaling on (MMA) the adapter branch is
``gscale(x, lambda) -> ln_1 -> adapter -> * lambda -> gscale(., 1 / lambda)`` where ``gscale`` is
the identity in the forward pass and multiplies the gradient in the backward pass: adapter
parameters receive gradients as if the output were not scaled by lambda, while the gradient that
reaches the block input is the true one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msta.backbone import VideoTextBackbone, create_backbone
from msta.config import AdapterCfg, Config, ConfigError


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, factor: float) -> Tensor:  # type: ignore[override]
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.factor, None


def grad_scale(x: Tensor, factor: float) -> Tensor:
    """Identity in the forward pass; multiplies the gradient by ``factor`` in the backward pass."""
    return _GradScale.apply(x, factor)


def depthwise_time_conv(g: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The depthwise convolution over time of ``nn.Conv2d(d, C, (k, 1), padding=(k // 2, 0),
    groups=d)`` applied to ``g.permute(0, 3, 1, 2)``, computed channels-last.

    ``g``: [B, T, L, d]; ``weight``: [C, 1, k, 1] (output channel ``c`` reads input channel
    ``c // (C // d)``); returns [B, T, L, C]. A few shifted multiply-adds: no layout changes and no
    convolution kernel, whose depthwise backward is slow on GPUs."""
    b, t, length, d = g.shape
    c, _, k, _ = weight.shape
    m = c // d
    w = weight.to(g.dtype).view(d, m, k)
    pad = k // 2
    gp = F.pad(g, (0, 0, 0, 0, pad, pad)).unsqueeze(-1)  # [B, T + 2 pad, L, d, 1]
    out = gp[:, 0:t] * w[:, :, 0]
    for j in range(1, k):
        out = out + gp[:, j : j + t] * w[:, :, j]
    if bias is not None:
        out = out + bias.to(g.dtype).view(d, m)
    return out.reshape(b, t, length, c)


class LayerAdapter(nn.Module):
    """The text and video adapters of one block, with their shared projection."""

    def __init__(
        self,
        text_width: int,
        vision_width: int,
        dim: int,
        *,
        text: bool = True,
        video: bool = True,
        shared: bool = True,
        temporal: bool = True,
    ) -> None:
        super().__init__()
        self.has_text = text
        self.has_video = video
        self.is_shared = shared
        if text:
            self.text_down = nn.Linear(text_width, dim)
            self.text_up = nn.Linear(dim, text_width)
        if video:
            self.video_down = nn.Linear(vision_width, dim)
            self.video_up = nn.Linear(dim, vision_width)
            if temporal:
                if vision_width % dim:
                    raise ConfigError(
                        f"adapter.dim ({dim}) must divide the vision width ({vision_width}) for the "
                        "depthwise temporal convolution (or set adapter.temporal=false)"
                    )
                self.video_tconv = nn.Conv2d(
                    dim, vision_width, kernel_size=(3, 1), padding=(1, 0), groups=dim, bias=True
                )
            else:
                self.video_tconv = None
        if shared:
            self.shared = nn.Linear(dim, dim)
        else:
            if text:
                self.text_shared = nn.Linear(dim, dim)
            if video:
                self.video_shared = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, ReLU) weights, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _mid(self, h: Tensor, branch: str) -> Tensor:
        proj = self.shared if self.is_shared else getattr(self, f"{branch}_shared")
        return F.relu(proj(h))

    def text_forward(self, ln1_x: Tensor) -> Tensor:
        h = self._mid(F.relu(self.text_down(ln1_x)), "text")
        return self.text_up(h)

    def video_forward(self, ln1_x: Tensor, backbone: VideoTextBackbone, frames: int) -> Tensor:
        h = self._mid(F.relu(self.video_down(ln1_x)), "video")
        a = self.video_up(h)
        if self.video_tconv is not None:
            g = backbone.tokens_to_grid(h, frames)  # [B, T, L, d]
            g = depthwise_time_conv(g, self.video_tconv.weight, self.video_tconv.bias)
            a = a + backbone.grid_to_tokens(g)
        return a


class FrozenTextBackbone(NamedTuple):
    """The backbone's own model object (no adapters), for pre-encoding descriptions."""

    model: nn.Module
    model_name: str
    pretrained: str


class MSTA(nn.Module):
    """Frozen backbone + adapters. Only adapter parameters are trainable."""

    def __init__(
        self,
        backbone: VideoTextBackbone,
        adapter: AdapterCfg | None = None,
        frames: int = 8,
        prompt_template: str = "a video of {}.",
    ) -> None:
        super().__init__()
        adapter = adapter or AdapterCfg()
        self.backbone = backbone
        self.tokenizer = backbone.tokenizer
        self.image_size = backbone.image_size
        self.frames = frames
        self.prompt_template = prompt_template
        self.adapter_cfg = adapter
        self.scale = float(adapter.scale)
        self.use_grad_scale = bool(adapter.grad_scale)
        text_on = adapter.branches in ("both", "text")
        video_on = adapter.branches in ("both", "video")
        self.text_adapters_on = text_on
        self.video_adapters_on = video_on
        towers = []
        if text_on:
            towers.append(("text", backbone.num_text_blocks))
        if video_on:
            towers.append(("vision", backbone.num_vision_blocks))
        for tower, n in towers:
            if adapter.end > n:
                raise ConfigError(
                    f"adapter.end ({adapter.end}) is beyond the {n} blocks of the {tower} tower "
                    f"of {backbone.name}"
                )
        self.adapters = nn.ModuleDict()
        if text_on or video_on:
            for layer in range(adapter.start, adapter.end + 1):
                self.adapters[str(layer)] = LayerAdapter(
                    backbone.text_width,
                    backbone.vision_width,
                    adapter.dim,
                    text=text_on,
                    video=video_on,
                    shared=adapter.shared,
                    temporal=adapter.temporal,
                )
        self._token_cache: dict[tuple[str, ...], Tensor] = {}
        self.cache_text_prefix = True  # reuse the frozen text blocks' output for a class list
        self._text_prefix_cache: dict = {}

    # ----------------------------------------------------------------- properties

    @property
    def logit_scale(self) -> Tensor:
        """The frozen multiplier of the cosine similarities (CLIP's, about 100 when pretrained)."""
        return self.backbone.logit_scale

    @property
    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per RGB channel the backbone expects frames to be normalised with."""
        return tuple(self.backbone.image_mean), tuple(self.backbone.image_std)

    @property
    def device(self) -> torch.device:
        return self.backbone.logit_scale.device

    # ----------------------------------------------------------------- adapter hooks

    def _scaled(self, ln1_x: Tensor, fn) -> Tensor:
        lam = self.scale
        if self.use_grad_scale and lam > 0:
            out = fn(grad_scale(ln1_x, lam)) * lam
            return grad_scale(out, 1.0 / lam)
        return fn(ln1_x) * lam

    def _text_hook(self, kind: str, index: int, x: Tensor, ln1_x: Tensor) -> Tensor | None:
        layer = self.adapters[str(index + 1)] if str(index + 1) in self.adapters else None
        if layer is None or not layer.has_text:
            return None
        return self._scaled(ln1_x, layer.text_forward)

    def _video_hook(self, frames: int):
        def hook(kind: str, index: int, x: Tensor, ln1_x: Tensor) -> Tensor | None:
            key = str(index + 1)
            if key not in self.adapters or not self.adapters[key].has_video:
                return None
            layer = self.adapters[key]
            return self._scaled(ln1_x, lambda h: layer.video_forward(h, self.backbone, frames))

        return hook

    # ----------------------------------------------------------------- encoders

    def encode_video(self, video: Tensor) -> Tensor:
        """[B, T, 3, H, W] normalised frames -> [B, D] (not normalised): the backbone's video
        embedding (open_clip: mean of the frame embeddings; ViCLIP: joint space-time)."""
        hook = self._video_hook(video.shape[1]) if self.video_adapters_on else None
        return self.backbone.encode_video(video, hook)

    def encode_text(self, tokens: Tensor, cut: bool = True) -> Tensor:
        """[C, context] token ids -> [C, D] (not normalised). The context is cut to the longest
        end-of-text position (exact for a causal text tower); ``cut=False`` runs all of it."""
        hook = self._text_hook if self.text_adapters_on else None
        # Blocks before the first text adapter are frozen: their output for a class list is cached
        # (exact) unless the backbone itself is being trained.
        frozen = self.adapter_cfg.start - 1 if self.text_adapters_on else self.backbone.num_text_blocks
        cache = self._text_prefix_cache if self.cache_text_prefix and not self._backbone_trainable() else None
        return self.backbone.encode_text_tokens(
            tokens.to(self.device), hook, cut=cut, frozen_blocks=frozen, cache=cache
        )

    def _backbone_trainable(self) -> bool:
        return any(p.requires_grad for p in self.backbone.parameters())

    def tokenize_classes(self, class_names: Sequence[str]) -> Tensor:
        key = (self.prompt_template, *class_names)
        tokens = self._token_cache.get(key)
        if tokens is None:
            prompts = [self.prompt_template.format(c) for c in class_names]
            tokens = self.tokenizer(prompts)
            if len(self._token_cache) >= 8:
                self._token_cache.clear()
            self._token_cache[key] = tokens
        return tokens

    def encode_class_prompts(self, class_names: Sequence[str]) -> Tensor:
        """The class-prompt embeddings ``[C, D]`` (template applied, adapters on when enabled)."""
        if not class_names:
            raise ValueError("no class names given")
        return self.encode_text(self.tokenize_classes(class_names))

    def forward(self, video: Tensor, text_features: Tensor) -> Tensor:
        """Logits ``[B, C]``: logit_scale * cos(video embedding, class embedding)."""
        v = F.normalize(self.encode_video(video), dim=-1)
        w = F.normalize(text_features, dim=-1)
        return self.logit_scale * (v @ w.t().to(v.dtype))

    # ----------------------------------------------------------------- parameters

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the trainable parameters (detached; shares storage with the model)."""
        return {k: p.detach() for k, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state_dict(self, state: dict[str, Tensor]) -> None:
        own = dict(self.named_parameters())
        expected = {k for k, p in own.items() if p.requires_grad}
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} (e.g. {missing[0]})")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)} (e.g. {unexpected[0]})")
            raise ValueError(
                "trainable parameters do not match this model's configuration: " + "; ".join(parts)
            )
        with torch.no_grad():
            for k in expected:
                src = state[k]
                if tuple(src.shape) != tuple(own[k].shape):
                    raise ValueError(
                        f"parameter {k} has shape {tuple(src.shape)}, the model expects {tuple(own[k].shape)}"
                    )
                own[k].copy_(src.to(own[k].device, own[k].dtype))

    def num_parameters(self) -> tuple[int, int]:
        """(trainable, total) parameter counts."""
        params = list(self.parameters())
        return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        self._text_prefix_cache.clear()  # backbone weights may change
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def set_backbone_trainable(self, enable: bool = True) -> None:
        """Unfreeze (or freeze) every backbone weight: full fine-tuning as a baseline."""
        for p in self.backbone.parameters():
            p.requires_grad_(enable)
        self._text_prefix_cache.clear()

    def frozen_text_backbone(self) -> FrozenTextBackbone:
        """The backbone's text model (no adapters: the whole open_clip model, or ViCLIP's text
        tower), name and weights: what ``descgen encode`` builds for the same name and weights."""
        return FrozenTextBackbone(
            self.backbone.frozen_text_model(), self.backbone.name, self.backbone.pretrained
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)


def build_model(cfg: Config) -> MSTA:
    """The MSTA model for a configuration (backbone weights loaded, adapters initialised)."""
    backbone = create_backbone(cfg.model.backbone, cfg.model.pretrained)
    if cfg.data.input_size is not None and cfg.data.input_size != backbone.image_size:
        raise ConfigError(
            f"data.input_size ({cfg.data.input_size}) differs from the image size of {backbone.name} "
            f"({backbone.image_size})"
        )
    model = MSTA(backbone, cfg.adapter, cfg.model.frames, cfg.model.prompt_template)
    if cfg.run.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model
