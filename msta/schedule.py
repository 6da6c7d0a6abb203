"""Learning-rate schedules, per optimizer step, as multipliers of the base learning rate.

* ``timm`` (the authors' logs): a cosine from ``lr`` to ``lr_min`` over ALL ``T`` steps,
  ``lr_min + (lr - lr_min) * (1 + cos(pi * t / T)) / 2``, with a linear warm-up from 0,
  ``lr * t / t_warm``, in place of it for the first ``t_warm`` steps.
* ``warmup_cosine``: a linear warm-up to ``lr`` over ``t_warm`` steps, then a cosine to ``lr_min``
  over the steps after the warm-up.

``t`` is the 0-based index of the optimizer step the learning rate is used for.
"""

from __future__ import annotations

import math


def timm_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return step / warmup_steps
    if total_steps <= 0:
        return 1.0
    progress = min(1.0, step / total_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES = {"timm": timm_factor, "warmup_cosine": warmup_cosine_factor}  # the config's optim.schedule


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float, kind: str) -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r} (known: {', '.join(SCHEDULES)})")
    return SCHEDULES[kind](step, warmup_steps, total_steps, min_ratio)
