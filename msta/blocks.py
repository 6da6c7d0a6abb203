"""What the frozen backbones share: running a tower's blocks with adapter hooks.

Each backbone (:class:`msta.backbone.OpenCLIPBackbone`, :class:`msta.viclip.ViCLIPBackbone`)
derives from :class:`FrozenBackbone`, names the function that runs one of its blocks,
``block_fn(blk, x, mask, hook, kind, index)`` (which ends with :func:`add_hook_output`), and
supplies the parts of its text tower. The base class keeps the backbone in eval mode, runs a range
of blocks (optionally with activation checkpointing) and encodes text, caching the output of the
leading text blocks that no hook touches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

BlockHook = Callable[[str, int, Tensor, Tensor], Tensor | None]
BlockFn = Callable[[nn.Module, Tensor, Tensor | None, BlockHook | None, str, int], Tensor]
MAX_CACHED_PREFIXES = 4  # token batches whose frozen-prefix output a text cache keeps


def add_hook_output(y: Tensor, hook: BlockHook | None, kind: str, index: int, x: Tensor, h: Tensor) -> Tensor:
    """The block output ``y`` plus what ``hook`` adds, computed from the block input ``x`` and its
    ``ln_1(x)`` ``h`` (nothing when there is no hook or it returns ``None``)."""
    if hook is None:
        return y
    extra = hook(kind, index, x, h)
    return y if extra is None else y + extra


def prefix_key(tokens: Tensor, frozen_blocks: int, *extra: Any) -> tuple:
    """What identifies the output of the first ``frozen_blocks`` text blocks for ``tokens``: their
    content, shape and device, and the autocast state they run under (plus ``extra``)."""
    dev = tokens.device.type
    autocast = torch.is_autocast_enabled(dev)
    dtype = torch.get_autocast_dtype(dev) if autocast else None
    digest = hashlib.sha1(tokens.detach().cpu().numpy().tobytes()).hexdigest()
    return (digest, tuple(tokens.shape), str(tokens.device), frozen_blocks, autocast, dtype, *extra)


class FrozenBackbone(nn.Module):
    """Base of the backbones: always in eval mode; blocks run through ``block_fn``."""

    block_fn: ClassVar[BlockFn]
    grad_checkpointing: bool = False

    def train(self, mode: bool = True) -> FrozenBackbone:
        super().train(False)  # frozen: always eval mode (no dropout, no patch dropout)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = bool(enable)

    def _run_blocks(
        self, blocks: nn.ModuleList, x: Tensor, mask: Tensor | None, hook, kind: str, start: int = 0
    ) -> Tensor:
        """Blocks ``start`` and on, in order (each checkpointed when that is on and grad enabled)."""
        run = type(self).block_fn
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for i in range(start, len(blocks)):
            if use_ckpt:
                x = checkpoint(run, blocks[i], x, mask, hook, kind, i, use_reentrant=False)
            else:
                x = run(blocks[i], x, mask, hook, kind, i)
        return x

    # ----------------------------------------------------------------- text
    # A backbone supplies its text tower's parts: _text_blocks, _text_mask, _embed_text, _pool_text
    # (and _text_key_extra when more than the tokens decides the frozen blocks' output).

    def encode_text_tokens(
        self,
        tokens: Tensor,
        block_hook: BlockHook | None = None,
        cut: bool = True,
        frozen_blocks: int = 0,
        cache: dict | None = None,
    ) -> Tensor:
        """[N, context] token ids -> [N, embed_dim] (not normalised).

        ``frozen_blocks``: the number of leading blocks the hook leaves alone. With a ``cache``
        dict their output (a function of the tokens alone while the weights are frozen) is
        computed once and reused: a class list is encoded every training step."""
        if cut:
            tokens = tokens[:, : self.text_cut_length(tokens)]
        blocks = self._text_blocks()
        mask = self._text_mask(tokens.shape[1])
        frozen_blocks = min(max(frozen_blocks, 0), len(blocks))
        x = self._frozen_prefix(tokens, blocks[:frozen_blocks], mask, cache)
        x = self._run_blocks(blocks, x, mask, block_hook, "text", start=frozen_blocks)
        return self._pool_text(x, tokens)

    def _frozen_prefix(
        self, tokens: Tensor, frozen: nn.ModuleList, mask: Tensor | None, cache: dict | None
    ) -> Tensor:
        """The output of the ``frozen`` leading text blocks for ``tokens``; with a ``cache`` it is
        computed once (without grad) and reused."""
        key = None
        if cache is not None and len(frozen):
            key = prefix_key(tokens, len(frozen), *self._text_key_extra())
            if key in cache:
                return cache[key]
        with torch.set_grad_enabled(torch.is_grad_enabled() and key is None):
            x = self._run_blocks(frozen, self._embed_text(tokens), mask, None, "text")
        if key is not None:
            if len(cache) >= MAX_CACHED_PREFIXES:
                cache.clear()
            cache[key] = x.detach()
        return x

    def _text_key_extra(self) -> tuple:
        return ()

    def text_cut_length(self, tokens: Tensor) -> int:
        raise NotImplementedError

    def _text_blocks(self) -> nn.ModuleList:
        raise NotImplementedError

    def _text_mask(self, length: int) -> Tensor | None:
        """The attention mask for a context of ``length`` tokens (None: attend both ways)."""
        raise NotImplementedError

    def _embed_text(self, tokens: Tensor) -> Tensor:
        """Token ids -> the input of the first block (token plus positional embeddings)."""
        raise NotImplementedError

    def _pool_text(self, x: Tensor, tokens: Tensor) -> Tensor:
        """The last block's output -> [N, embed_dim] text embeddings."""
        raise NotImplementedError
