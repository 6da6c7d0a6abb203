"""Frozen video-language backbones behind one narrow interface.

The MSTA adapters never touch a backbone's modules. A backbone runs its own transformer blocks
and, after each block, calls ``block_hook(kind, index, x, ln1_x)`` with

* ``kind``: ``"text"`` or ``"vision"``;
* ``index``: the block's 0-based index in its tower;
* ``x``: the block input (batch-first tokens);
* ``ln1_x``: the block's own (frozen) first layer norm applied to ``x``;

and adds whatever tensor the hook returns to the block output (the parallel adapter placement:
``x + attn(ln_1(x)) + mlp(...) + hook(...)``). ``None`` means nothing to add.

Video tokens are laid out however the backbone likes; :meth:`VideoTextBackbone.tokens_to_grid`
and :meth:`VideoTextBackbone.grid_to_tokens` convert per-token features to and from a
``[B, T, L, C]`` grid so a temporal operator can work over frames without knowing the layout.

:class:`OpenCLIPBackbone` wraps any open_clip CLIP model whose towers are open_clip's own
``VisionTransformer`` / ``TextTransformer`` (frame-level encoding: frames are independent images,
the video embedding is the mean of the frame embeddings). The joint space-time backbone ViCLIP
(:mod:`msta.viclip`) implements the same protocol. :func:`create_backbone` builds either; names
and weights are resolved by :mod:`descgen.encoders`, the loading path ``descgen encode`` uses.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from torch import Tensor, nn

from descgen.viclip_text import packed_attention
from msta.blocks import BlockHook, FrozenBackbone, add_hook_output
from msta.errors import MstaError

if TYPE_CHECKING:  # pragma: no cover
    from descgen.encoders import EncoderSpec

RANDOM_WEIGHTS_SEED = 0  # "pretrained: none" always gives the same weights (every process, every run)


class BackboneError(MstaError, RuntimeError):
    """The backbone cannot be built or loaded. The message is meant for the user, as is."""


@runtime_checkable
class VideoTextBackbone(Protocol):
    """What the MSTA model needs from a frozen video-language backbone."""

    name: str  # model name (for fingerprints and tokenizers)
    pretrained: str  # weights: tag, checkpoint path or "none"
    text_width: int
    vision_width: int
    num_text_blocks: int
    num_vision_blocks: int
    image_size: int
    context_length: int
    embed_dim: int
    logit_scale: Tensor  # the frozen multiplier of cosine similarities
    tokenizer: Callable[..., Tensor]
    image_mean: tuple[float, float, float]  # input statistics the frames are normalised with
    image_std: tuple[float, float, float]

    def encode_text_tokens(self, tokens: Tensor, block_hook: BlockHook | None = None) -> Tensor: ...

    def encode_video(self, video: Tensor, block_hook: BlockHook | None = None) -> Tensor: ...

    def tokens_to_grid(self, x: Tensor, frames: int) -> Tensor: ...

    def grid_to_tokens(self, g: Tensor) -> Tensor: ...

    def set_grad_checkpointing(self, enable: bool = True) -> None: ...

    def frozen_text_model(self) -> nn.Module: ...


# --------------------------------------------------------------------------- open_clip


def _spec(backbone: str, pretrained: str) -> EncoderSpec:
    from descgen.encoders import EncoderLoadError, resolve_encoder

    try:
        return resolve_encoder(backbone, pretrained)
    except EncoderLoadError as exc:
        raise BackboneError(str(exc)) from None


def resolve_model_name(backbone: str) -> str:
    """The canonical model name of ``backbone`` (a name, a shipped config name, or a JSON file);
    open_clip configs are registered with open_clip under it."""
    return _spec(backbone, "none").name


def create_open_clip(
    backbone: str, pretrained: str, seed: int = RANDOM_WEIGHTS_SEED
) -> tuple[nn.Module, str]:
    """An open_clip model (eval mode, CPU, fp32, frozen) and its registered name."""
    from descgen.encoders import EncoderLoadError, build_open_clip

    spec = _spec(backbone, pretrained)
    if spec.family != "open_clip":
        raise BackboneError(f"{backbone} is not an open_clip model")
    try:
        return build_open_clip(spec, seed=seed), spec.name
    except EncoderLoadError as exc:
        raise BackboneError(str(exc)) from None


def create_backbone(
    name: str, pretrained: str = "none", seed: int = RANDOM_WEIGHTS_SEED
) -> VideoTextBackbone:
    """The frozen backbone ``name`` with weights ``pretrained``: the one factory of msta.

    ``name``: ``viclip-b16``, ``viclip-l14``, a shipped config (``clip-tiny``, ``viclip-tiny``),
    any open_clip model name, or a model-config JSON file (open_clip's, or a ViCLIP config).
    ``pretrained``: ``none`` (random, seeded), a local checkpoint file, or an open_clip tag.
    Names and weights are resolved by :mod:`descgen.encoders`, as for ``descgen encode``."""
    from descgen.encoders import EncoderLoadError

    spec = _spec(name, pretrained)
    try:
        if spec.family == "viclip":
            from msta.viclip import ViCLIPBackbone

            return ViCLIPBackbone.create(spec, seed=seed)
        return OpenCLIPBackbone.create(name, pretrained, seed=seed)
    except EncoderLoadError as exc:
        raise BackboneError(str(exc)) from None


@functools.lru_cache(maxsize=8)
def _tokenizer(name: str, context_length: int) -> Callable[..., Tensor]:
    """open_clip's tokenizer for a model (built once: loading the vocabulary takes a while)."""
    import open_clip

    return open_clip.get_tokenizer(name, context_length=context_length)


def _gather_text_tower(model: nn.Module) -> dict[str, Any]:
    from open_clip.transformer import TextTransformer

    if hasattr(model, "token_embedding") and hasattr(model, "transformer"):  # open_clip.CLIP
        return {
            "token_embedding": model.token_embedding,
            "positional_embedding": model.positional_embedding,
            "transformer": model.transformer,
            "ln_final": model.ln_final,
            "text_projection": model.text_projection,
            "pool_type": model.text_pool_type,
            "eos_id": getattr(model, "text_eos_id", None),
            "attn_mask": model.attn_mask,
            "context_length": model.context_length,
        }
    text = getattr(model, "text", None)
    if isinstance(text, TextTransformer) and text.cls_emb is None and not text.use_pad_mask:
        return {
            "token_embedding": text.token_embedding,
            "positional_embedding": text.positional_embedding,
            "transformer": text.transformer,
            "ln_final": text.ln_final,
            "text_projection": text.text_projection,
            "pool_type": text.pool_type,
            "eos_id": text.eos_id,
            "attn_mask": text.attn_mask,
            "context_length": text.context_length,
        }
    raise BackboneError("unsupported text tower: MSTA needs an open_clip TextTransformer")


def _plain_self_attention(attn: nn.Module) -> bool:
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn.batch_first
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and not attn.add_zero_attn
    )


def run_block(
    blk: nn.Module,
    x: Tensor,
    attn_mask: Tensor | None,
    hook: BlockHook | None,
    kind: str,
    index: int,
) -> Tensor:
    """One open_clip residual block (same operations as its own forward) plus the hook output."""
    h = blk.ln_1(x)
    if hasattr(blk, "ln_attn"):  # CustomResidualAttentionBlock
        a = blk.ls_1(blk.ln_attn(blk.attn(h, attn_mask=attn_mask)))
    elif _plain_self_attention(blk.attn) and not hasattr(blk, "ln_1_kv"):
        a = blk.ls_1(packed_attention(blk.attn, h, attn_mask))
    else:
        a = blk.ls_1(blk.attention(q_x=h, attn_mask=attn_mask))
    y = x + a
    y = y + blk.ls_2(blk.mlp(blk.ln_2(y)))
    return add_hook_output(y, hook, kind, index, x, h)


class OpenCLIPBackbone(FrozenBackbone):
    """A frozen open_clip CLIP model run block by block with adapter hooks.

    Frames are encoded independently ([B*T, L, C] tokens per block); the video embedding is the
    mean of the frame embeddings (not normalised)."""

    block_fn = staticmethod(run_block)

    def __init__(self, clip: nn.Module, name: str, pretrained: str) -> None:
        super().__init__()
        from open_clip.transformer import VisionTransformer

        self.clip = clip
        self.name = name
        self.pretrained = pretrained
        visual = getattr(clip, "visual", None)
        if not isinstance(visual, VisionTransformer) or visual.attn_pool is not None:
            raise BackboneError(
                f"unsupported vision tower in {name}: MSTA needs an open_clip VisionTransformer "
                "(timm and ResNet towers are not supported)"
            )
        if not visual.transformer.batch_first:
            raise BackboneError(f"{name}: the vision transformer must be batch-first")
        _gather_text_tower(clip)  # fails early on an unsupported text tower
        if not self._text["transformer"].batch_first:
            raise BackboneError(f"{name}: the text transformer must be batch-first")

        self.vision_width = int(visual.transformer.width)
        self.text_width = int(self._text["transformer"].width)
        self.num_vision_blocks = len(visual.transformer.resblocks)
        self.num_text_blocks = len(self._text["transformer"].resblocks)
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, tuple | list) else size)
        self.context_length = int(self._text["context_length"])
        self.embed_dim = int(visual.output_dim)
        pre = getattr(visual, "preprocess_cfg", {}) or {}
        self.image_mean = tuple(pre.get("mean", (0.48145466, 0.4578275, 0.40821073)))
        self.image_std = tuple(pre.get("std", (0.26862954, 0.26130258, 0.27577711)))

        for p in self.clip.parameters():
            p.requires_grad_(False)
        self.register_buffer("logit_scale", clip.logit_scale.detach().exp().clone(), persistent=False)

        self.tokenizer = _tokenizer(name, self.context_length)

    @classmethod
    def create(
        cls, backbone: str, pretrained: str = "none", seed: int = RANDOM_WEIGHTS_SEED
    ) -> OpenCLIPBackbone:
        clip, name = create_open_clip(backbone, pretrained, seed=seed)
        return cls(clip, name, pretrained)

    # ----------------------------------------------------------------- helpers

    def frozen_text_model(self) -> nn.Module:
        """The module whose text weights define the encoder fingerprint (as ``descgen encode``)."""
        return self.clip

    @property
    def _text(self) -> dict[str, Any]:
        # Looked up on every use: moving the model (.to, .half) replaces buffers such as the mask.
        return _gather_text_tower(self.clip)

    def tokens_to_grid(self, x: Tensor, frames: int) -> Tensor:
        """[B*T, L, C] frame tokens -> [B, T, L, C]."""
        bt, length, c = x.shape
        return x.reshape(bt // frames, frames, length, c)

    def grid_to_tokens(self, g: Tensor) -> Tensor:
        """[B, T, L, C] -> [B*T, L, C]."""
        b, t, length, c = g.shape
        return g.reshape(b * t, length, c)

    # ----------------------------------------------------------------- text

    def text_cut_length(self, tokens: Tensor) -> int:
        """The shortest context that gives exactly the full-context result (causal mask: tokens
        after the pooled end-of-text token cannot influence it). The full context when the
        tower pools otherwise or attends both ways."""
        t = self._text
        if t["attn_mask"] is None or t["pool_type"] not in ("argmax", "eos"):
            return tokens.shape[1]
        if t["pool_type"] == "argmax":
            pos = tokens.argmax(dim=-1)
        else:
            pos = (tokens == t["eos_id"]).int().argmax(dim=-1)
        return int(pos.max().item()) + 1

    def _text_blocks(self) -> nn.ModuleList:
        return self._text["transformer"].resblocks

    def _text_mask(self, length: int) -> Tensor | None:
        mask = self._text["attn_mask"]
        return None if mask is None else mask[:length, :length]

    def _text_key_extra(self) -> tuple:
        return (self._text["transformer"].get_cast_dtype(),)

    def _embed_text(self, tokens: Tensor) -> Tensor:
        t = self._text
        cast_dtype = t["transformer"].get_cast_dtype()
        x = t["token_embedding"](tokens).to(cast_dtype)
        return x + t["positional_embedding"][: tokens.shape[1]].to(cast_dtype)

    def _pool_text(self, x: Tensor, tokens: Tensor) -> Tensor:
        from open_clip.transformer import text_global_pool

        t = self._text
        x = t["ln_final"](x)
        x = text_global_pool(x, tokens, t["pool_type"], eos_token_id=t["eos_id"])
        proj = t["text_projection"]
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    # ----------------------------------------------------------------- vision

    def encode_frames(self, frames: Tensor, block_hook: BlockHook | None = None) -> Tensor:
        """[N, 3, H, W] images -> [N, embed_dim] (not normalised)."""
        visual = self.clip.visual
        x = visual._embeds(frames)
        x = self._run_blocks(visual.transformer.resblocks, x, None, block_hook, "vision")
        pooled, _ = visual._pool(x)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    def encode_video(self, video: Tensor, block_hook: BlockHook | None = None) -> Tensor:
        """[B, T, 3, H, W] -> [B, embed_dim]: the mean of the frame embeddings (not normalised)."""
        if video.dim() != 5:
            raise ValueError(f"video must be [B, T, 3, H, W], got shape {tuple(video.shape)}")
        b, t = video.shape[:2]
        emb = self.encode_frames(video.flatten(0, 1), block_hook)
        return emb.view(b, t, -1).mean(dim=1)
