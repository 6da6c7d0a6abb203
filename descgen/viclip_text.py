"""ViCLIP's text tower, the transformer block both ViCLIP towers share, and checkpoint reading.

This module imports torch at the top: import it inside the functions that need it
(:mod:`descgen.encoders` does), never from ``descgen/__init__``.

Module and parameter names follow the released ViCLIP weights, so a tower loads the
``text_encoder.*`` (or ``vision_encoder.*``) part of a checkpoint without renaming:
``transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2,
mlp.c_fc, mlp.c_proj}``.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the activation ViCLIP (and OpenAI's CLIP) was trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


def packed_attention(attn: nn.MultiheadAttention, x: Tensor, mask: Tensor | None = None) -> Tensor:
    """``attn(x, x, x, attn_mask=mask, need_weights=False)[0]`` for batch-first ``x`` [N, L, E]: the
    packed ``in_proj`` weights of ``attn`` in one matmul, then ``F.scaled_dot_product_attention`` on
    the batch-first layout directly (attention dropout only while ``attn`` is training)."""
    n, length, e = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, heads, e // heads).permute(2, 0, 3, 1, 4).unbind(0)
    if mask is not None:
        mask = mask.to(q.dtype)
    dropout = attn.dropout if attn.training else 0.0
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    return F.linear(o.transpose(1, 2).reshape(n, length, e), attn.out_proj.weight, attn.out_proj.bias)


class ResidualBlock(nn.Module):
    """A pre-LN transformer block: ``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))`` (QuickGELU MLP,
    4x wide). ``ls_1``/``ls_2`` are identities, present so that block runners written for open_clip
    blocks (which have layer-scale slots) run these blocks unchanged."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                c_fc=nn.Linear(width, 4 * width), gelu=QuickGELU(), c_proj=nn.Linear(4 * width, width)
            )
        )
        self.ls_2 = nn.Identity()

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + packed_attention(self.attn, self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of :class:`ResidualBlock` (``resblocks``), batch-first."""

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.width = width
        self.batch_first = True
        self.resblocks = nn.ModuleList(ResidualBlock(width, heads) for _ in range(layers))

    def init_weights(self) -> None:
        """CLIP's initialisation (normal, scaled by depth)."""
        layers = len(self.resblocks)
        proj_std = (self.width**-0.5) * ((2 * layers) ** -0.5)
        for blk in self.resblocks:
            nn.init.normal_(blk.attn.in_proj_weight, std=self.width**-0.5)
            nn.init.normal_(blk.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(blk.mlp.c_fc.weight, std=(2 * self.width) ** -0.5)
            nn.init.normal_(blk.mlp.c_proj.weight, std=proj_std)


def causal_mask(length: int) -> Tensor:
    """Additive mask: position ``i`` sees positions ``<= i``."""
    return torch.full((length, length), float("-inf")).triu_(1)


class ViCLIPText(nn.Module):
    """ViCLIP's text tower: CLIP's causal text transformer, pooled at the end-of-text token (the
    largest token id), projected by ``text_projection``.

    ``encode_text(tokens, cut=True)`` cuts the batch after its last end-of-text token first; with
    a causal mask the pooled features do not depend on what follows, so the cut is exact."""

    cuts_itself = True  # descgen.encode calls encode_text(tokens, cut=...) directly

    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        width, ctx = int(cfg["width"]), int(cfg["context_length"])
        self.context_length = ctx
        self.width = width
        self.output_dim = int(cfg["output_dim"])
        self.token_embedding = nn.Embedding(int(cfg["vocab_size"]), width)
        self.positional_embedding = nn.Parameter(torch.empty(ctx, width))
        self.transformer = Transformer(width, int(cfg["heads"]), int(cfg["layers"]))
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, self.output_dim))
        self.register_buffer("attn_mask", causal_mask(ctx), persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)
        self.transformer.init_weights()

    def embed(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        return self.token_embedding(tokens) + self.positional_embedding[:length]

    def pool(self, x: Tensor, tokens: Tensor) -> Tensor:
        x = self.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        return x @ self.text_projection

    @staticmethod
    def cut_length(tokens: Tensor) -> int:
        return int(tokens.argmax(dim=-1).max().item()) + 1

    def encode_text(self, tokens: Tensor, cut: bool = True) -> Tensor:
        """[N, context] token ids -> [N, output_dim] (not normalised)."""
        if cut:
            tokens = tokens[:, : self.cut_length(tokens)]
        length = tokens.shape[1]
        x = self.embed(tokens)
        mask = self.attn_mask[:length, :length]
        for blk in self.transformer.resblocks:
            x = blk(x, mask)
        return self.pool(x, tokens)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.encode_text(tokens)


# ---------------------------------------------------------------------- checkpoints


def read_checkpoint(path: str | Path) -> dict[str, Tensor]:
    """The state dict of a ViCLIP checkpoint: a ``.pth``/``.pt`` holding ``{"model": state_dict}``
    (or the state dict itself), or a ``.safetensors`` file with the same key names. A leading
    ``module.`` (saved from a DistributedDataParallel wrapper) is removed."""
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(p), device="cpu")
    else:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
        state = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise ValueError(f"{p} does not hold a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def load_part(module: nn.Module, state: dict[str, Tensor], prefix: str, source: str) -> None:
    """Copy ``prefix + name`` of ``state`` into every parameter and persistent buffer of
    ``module``. A missing or mis-shaped key raises ``KeyError`` with one message naming it."""
    own = module.state_dict()
    part = {}
    for name, tensor in own.items():
        key = prefix + name
        if key not in state:
            raise KeyError(f"checkpoint {source} has no key {key}")
        got = state[key]
        if tuple(got.shape) != tuple(tensor.shape):
            raise KeyError(
                f"checkpoint {source}: key {key} has shape {tuple(got.shape)}, expected {tuple(tensor.shape)}"
            )
        part[name] = got
    module.load_state_dict(part, strict=True)
