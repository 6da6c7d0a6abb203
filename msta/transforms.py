"""Train and evaluation transforms of a clip, sized from the backbone's image size ``S``.

Training resizes the short side to ``S*256/224``, takes a multi-scale crop resized to ``S``,
optionally flips horizontally, and applies colour jitter (p=0.8) and greyscale (p=0.2).
Evaluation resizes the short side to ``S*256/224`` and takes the centre crop (or, for three
spatial crops, resizes the short side to ``S`` and takes left/centre/right crops).
All frames of a clip share the same random parameters; the output is normalised with CLIP's
mean and standard deviation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from msta.video import DataError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) per RGB channel: the backbone's
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)


def scale_size(input_size: int) -> int:
    """Short-side size before cropping: ``input_size * 256 / 224``."""
    return int(round(input_size * 256 / 224))


@dataclass(frozen=True)
class Box:
    """A crop in source-pixel coordinates."""

    x: int
    y: int
    w: int
    h: int


def _to_source(x: float, y: float, w: float, h: float, f: float, src_w: int, src_h: int) -> Box:
    bw = max(1, min(src_w, int(round(w * f))))
    bh = max(1, min(src_h, int(round(h * f))))
    bx = min(max(0, int(round(x * f))), src_w - bw)
    by = min(max(0, int(round(y * f))), src_h - bh)
    return Box(bx, by, bw, bh)


def multiscale_crop_box(
    src_h: int,
    src_w: int,
    input_size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = MULTI_SCALES,
    max_aspect_gap: int = 1,
) -> Box:
    """A random multi-scale crop (TSN style) for a frame of size ``src_h x src_w``.

    The frame is thought of as resized to short side ``input_size*256/224``; the crop's width and
    height are scales of that short side (at most ``max_aspect_gap`` steps apart in ``scales``) and
    it sits at one of five fixed positions (four corners, centre). The box is returned in source
    pixels, so the frame is resampled only once.
    """
    short = scale_size(input_size)
    f = min(src_h, src_w) / short  # source pixels per resized pixel
    rh, rw = src_h / f, src_w / f
    sizes = [int(short * s) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_aspect_gap]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    dx, dy = (rw - cw) / 4, (rh - ch) / 4
    positions = [(0, 0), (4 * dx, 0), (0, 4 * dy), (4 * dx, 4 * dy), (2 * dx, 2 * dy)]
    ox, oy = positions[int(rng.integers(len(positions)))]
    return _to_source(ox, oy, cw, ch, f, src_w, src_h)


def eval_crop_boxes(src_h: int, src_w: int, input_size: int, num_crops: int = 1) -> list[Box]:
    """Evaluation crops: one centre crop after resizing the short side to ``input_size*256/224``, or
    three crops (start / centre / end of the long side) after resizing the short side to
    ``input_size``."""
    if num_crops == 1:
        short = scale_size(input_size)
    elif num_crops == 3:
        short = input_size
    else:
        raise DataError(f"spatial crops must be 1 or 3, got {num_crops}")
    f = min(src_h, src_w) / short
    rh, rw = src_h / f, src_w / f
    s = input_size
    if num_crops == 1:
        return [_to_source((rw - s) / 2, (rh - s) / 2, s, s, f, src_w, src_h)]
    if rw >= rh:
        xs = [0.0, (rw - s) / 2, rw - s]
        return [_to_source(x, (rh - s) / 2, s, s, f, src_w, src_h) for x in xs]
    ys = [0.0, (rh - s) / 2, rh - s]
    return [_to_source((rw - s) / 2, y, s, s, f, src_w, src_h) for y in ys]


@dataclass(frozen=True)
class Jitter:
    """Colour jitter parameters shared by all frames of a clip."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...]


@dataclass(frozen=True)
class TrainParams:
    box: Box
    flip: bool
    jitter: Jitter | None
    grey: bool


def draw_train_params(
    src_h: int,
    src_w: int,
    input_size: int,
    rng: np.random.Generator,
    hflip: bool,
    jitter_p: float = 0.8,
    grey_p: float = 0.2,
    strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
) -> TrainParams:
    """Draw every random parameter of one training clip (always the same number of draws)."""
    box = multiscale_crop_box(src_h, src_w, input_size, rng)
    u = rng.random(3)
    b, c, s, h = strength
    factors = rng.random(4)
    order = tuple(int(i) for i in rng.permutation(4))
    jitter = Jitter(
        brightness=1 + b * (2 * factors[0] - 1),
        contrast=1 + c * (2 * factors[1] - 1),
        saturation=1 + s * (2 * factors[2] - 1),
        hue=h * (2 * factors[3] - 1),
        order=order,
    )
    return TrainParams(
        box=box,
        flip=bool(hflip and u[0] < 0.5),
        jitter=jitter if u[1] < jitter_p else None,
        grey=bool(u[2] < grey_p),
    )


def _crop_resize(frames: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    crop = frames[:, :, box.y : box.y + box.h, box.x : box.x + box.w]
    if crop.shape[-2:] == (size, size):
        return crop.contiguous()
    return TF.resize(crop, [size, size], antialias=True)


def _normalize(x: torch.Tensor, stats: Stats | None = None) -> torch.Tensor:
    mean, std = stats or (CLIP_MEAN, CLIP_STD)
    mean = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, H, W]``."""
    t = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise DataError(f"expected frames of shape [T, H, W, 3], got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def apply_train_transform(
    frames: np.ndarray | torch.Tensor, params: TrainParams, input_size: int, stats: Stats | None = None
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> normalised float ``[T, 3, S, S]`` with the given parameters."""
    import torchvision.transforms.v2.functional as TF

    x = _crop_resize(_as_tensor(frames), params.box, input_size)
    if params.flip:
        x = x.flip(-1)
    x = x.float().div_(255.0)
    if params.jitter is not None:
        j = params.jitter
        for op in j.order:
            if op == 0:
                x = TF.adjust_brightness(x, j.brightness)
            elif op == 1:
                x = TF.adjust_contrast(x, j.contrast)
            elif op == 2:
                x = TF.adjust_saturation(x, j.saturation)
            else:
                x = TF.adjust_hue(x, j.hue)
    if params.grey:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return _normalize(x, stats).contiguous()


def train_transform(
    frames: np.ndarray | torch.Tensor,
    input_size: int,
    rng: np.random.Generator,
    hflip: bool,
    stats: Stats | None = None,
) -> torch.Tensor:
    """Training augmentation of one clip: uint8 ``[T, H, W, 3]`` -> float ``[T, 3, S, S]``."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    return apply_train_transform(frames, draw_train_params(h, w, input_size, rng, hflip), input_size, stats)


def eval_transform(
    frames: np.ndarray | torch.Tensor, input_size: int, num_crops: int = 1, stats: Stats | None = None
) -> torch.Tensor:
    """Evaluation views of one clip: ``[T, 3, S, S]`` for one crop, ``[3, T, 3, S, S]`` for three."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    x = _as_tensor(frames)
    views = [
        _normalize(_crop_resize(x, box, input_size).float().div_(255.0), stats)
        for box in eval_crop_boxes(h, w, input_size, num_crops)
    ]
    return views[0].contiguous() if num_crops == 1 else torch.stack(views).contiguous()


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "Box",
    "Jitter",
    "TrainParams",
    "apply_train_transform",
    "draw_train_params",
    "eval_crop_boxes",
    "eval_transform",
    "multiscale_crop_box",
    "scale_size",
    "train_transform",
]
