"""The MSTA training loss: cross-entropy plus the description consistency term.

::

    L_CE = cross_entropy(logit_scale * v . w^T, y)
    Ds_c = normalize(mean_i normalize(spatial_desc_{c,i}))      # frozen text encoder, precomputed
    Dt_c = normalize(mean_i normalize(temporal_desc_{c,i}))
    L_CC = mean_c [2 - cos(w_c, Ds_c) - cos(w_c, Dt_c)]          # over the training classes
    L    = L_CE + alpha * L_CC
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def description_means(desc: Tensor) -> Tensor:
    """[C, N, D] description embeddings -> [C, D]: normalised mean of the normalised embeddings."""
    if desc.dim() != 3:
        raise ValueError(f"description embeddings must be [C, N, D], got shape {tuple(desc.shape)}")
    return F.normalize(F.normalize(desc.float(), dim=-1).mean(dim=1), dim=-1)


def consistency_loss(w: Tensor, desc_spatial: Tensor, desc_temporal: Tensor) -> Tensor:
    """L_CC for class-prompt embeddings ``w`` [C, D] and description embeddings [C, N, D] each."""
    if w.dim() != 2:
        raise ValueError(f"class embeddings must be [C, D], got shape {tuple(w.shape)}")
    for name, d in (("spatial", desc_spatial), ("temporal", desc_temporal)):
        if d.dim() != 3 or d.shape[0] != w.shape[0] or d.shape[2] != w.shape[1]:
            raise ValueError(
                f"{name} description embeddings must be [C={w.shape[0]}, N, D={w.shape[1]}], "
                f"got shape {tuple(d.shape)}"
            )
    wn = F.normalize(w.float(), dim=-1)
    ds = description_means(desc_spatial.to(wn.device))
    dt = description_means(desc_temporal.to(wn.device))
    return (2.0 - (wn * ds).sum(dim=-1) - (wn * dt).sum(dim=-1)).mean()


def msta_loss(
    logits: Tensor,
    labels: Tensor,
    class_features: Tensor | None = None,
    desc_spatial: Tensor | None = None,
    desc_temporal: Tensor | None = None,
    consistency_weight: float = 1.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """``(L_CE + alpha * L_CC, {"ce": ..., "cc": ...})`` (the parts detached). L_CC is skipped (and
    reported as 0) when ``consistency_weight`` is 0 or the descriptions are not given."""
    ce = F.cross_entropy(logits.float(), labels)
    use_cc = (
        consistency_weight > 0
        and class_features is not None
        and desc_spatial is not None
        and desc_temporal is not None
    )
    if use_cc:
        cc = consistency_loss(class_features, desc_spatial, desc_temporal)
        loss = ce + consistency_weight * cc
    else:
        cc = torch.zeros((), device=ce.device)
        loss = ce
    return loss, {"ce": ce.detach(), "cc": cc.detach()}
