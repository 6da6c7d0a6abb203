"""Train and evaluation transforms of a clip, sized from the backbone's image size ``S``.

Training resizes the short side to ``S*256/224``, takes a multi-scale crop resized to ``S``,
optionally flips horizontally, and applies colour jitter (p=0.8) and greyscale (p=0.2).
Evaluation resizes the short side to ``S*256/224`` and takes the centre crop (or, for three
spatial crops, resizes the short side to ``S`` and takes left/centre/right crops).
All frames of a clip share the same random parameters; the output is normalised with CLIP's
mean and standard deviation.

Colour jitter and greyscale are linear in RGB, so a clip's whole colour augmentation and the
normalisation fold into one affine map (:func:`colour_map`: weights on the pixel and on its frame's
mean colour, an offset), which :func:`finish` applies to whole batches and clamps once; brightness, contrast and saturation equal torchvision's ``ColorJitter`` wherever its
intermediate clamps do not bite, and hue is a rotation about the grey axis (close to HSV's hue shift
at a small fraction of its cost).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights: the grey level of greyscale and saturation


def _grey_matrix() -> np.ndarray:
    return np.tile(np.asarray(LUMA), (3, 1))  # every output channel = luma


def _hue_matrix(turns: float) -> np.ndarray:
    """Rotation of RGB space about the grey axis ``(1, 1, 1)`` by ``turns`` of a full turn (Rodrigues'
    formula): greys stay, red turns towards yellow for a positive angle, as an HSV hue shift does."""
    a = 2 * np.pi * turns
    # k @ v is the cross product of the unit grey axis with v
    k = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / np.sqrt(3)
    return np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)


def colour_affine(params: TrainParams | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The colour jitter and greyscale of a clip as one affine map, on ``[0, 1]`` RGB.

    Returns ``(a, m, c)`` with ``out = a @ rgb + m @ mean_t + c`` for every pixel of frame ``t``,
    ``mean_t`` being that frame's mean RGB (contrast blends towards the frame's mean grey, a linear
    function of its mean colour). Brightness scales; contrast blends with the mean grey; saturation
    blends with the pixel's grey; hue turns the colours about the grey axis by ``hue`` of a full turn
    (an HSV-like hue shift); all in the drawn order, then greyscale. The result is clamped to
    ``[0, 1]`` once, after the whole map.
    """
    a, m, c = np.eye(3), np.zeros((3, 3)), np.zeros(3)
    jitter = params.jitter if params is not None else None
    luma = np.asarray(LUMA)
    for op in jitter.order if jitter is not None else ():
        if op == 0:
            f = jitter.brightness
            a, m, c = f * a, f * m, f * c
        elif op == 1:
            k = jitter.contrast  # the image's mean is (a + m) @ mean + c; its grey: luma @ that
            m = k * m + (1 - k) * np.outer(np.ones(3), luma @ (a + m))
            a, c = k * a, k * c + (1 - k) * float(luma @ c)
        else:
            s = jitter.saturation
            op_m = s * np.eye(3) + (1 - s) * _grey_matrix() if op == 2 else _hue_matrix(jitter.hue)
            a, m, c = op_m @ a, op_m @ m, op_m @ c
    if params is not None and params.grey:
        g = _grey_matrix()
        a, m, c = g @ a, g @ m, g @ c
    return a, m, c


COLOUR_COLUMNS = 9  # per output channel: 3 pixel weights, 3 frame-mean weights, offset, low, high


def colour_map(params: TrainParams | None = None, stats: Stats | None = None) -> torch.Tensor:
    """The map from a clip's uint8 RGB values to the model's input, as float32 ``[3, 9]``.

    Per output channel: three weights on the pixel's 0..255 RGB values, three on the frame's mean
    RGB (for contrast), an offset, and the lower and upper bound of the clamp; the colour
    augmentation of ``params`` (none for evaluation), the scaling to ``[0, 1]`` and the normalisation
    with ``stats`` are folded in. It does not look at the pixels, so a loader worker computes it for
    free, and :func:`finish` applies it on the training device in a few whole-tensor operations.
    """
    mean, std = (np.asarray(v, dtype=np.float64) for v in (stats or (CLIP_MEAN, CLIP_STD)))
    a, m, c = colour_affine(params)
    out = np.empty((3, COLOUR_COLUMNS))
    out[:, 0:3] = a / (255.0 * std[:, None])
    out[:, 3:6] = m / (255.0 * std[:, None])
    out[:, 6] = (c - mean) / std
    out[:, 7] = -mean / std
    out[:, 8] = (1.0 - mean) / std
    return torch.from_numpy(out.astype(np.float32))


def finish(video: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """uint8 clips ``[..., T, 3, H, W]`` and their :func:`colour_map` ``[..., 3, 9]`` -> normalised
    float ``[..., T, 3, H, W]``; batched, on the tensors' device (the training device for batches)."""
    *lead, t, ch, h, w = video.shape
    n = int(np.prod(lead)) if lead else 1
    cm = colour.reshape(n, 3, COLOUR_COLUMNS).to(torch.float32)
    x = video.reshape(n, t, ch, h * w).to(torch.float32)
    # [n, t, 3]: the offset, plus the weights on each frame's mean colour (contrast; zero otherwise,
    # computed anyway: deciding would cost a device synchronisation per batch)
    offset = cm[:, None, :, 6] + torch.einsum("ncj,ntj->ntc", cm[:, :, 3:6], x.mean(dim=3))
    y = torch.matmul(cm[:, None, :, 0:3], x).add_(offset.unsqueeze(-1))
    y = torch.maximum(y, cm[:, None, :, 7:8], out=y)
    y = torch.minimum(y, cm[:, None, :, 8:9], out=y)
    return y.view(*lead, t, ch, h, w)


def batch_video(batch: dict, device: torch.device | str, non_blocking: bool = True) -> torch.Tensor:
    """The model input of a loader batch (or one sample) on ``device``: uint8 clips with their
    ``colour`` maps are moved as uint8 and finished there; float clips are moved as they are."""
    video = batch["video"].to(device, non_blocking=non_blocking)
    if "colour" not in batch:
        return video
    return finish(video, batch["colour"].to(device, non_blocking=non_blocking))


def _as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, H, W]``."""
    t = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise DataError(f"expected frames of shape [T, H, W, 3], got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def train_views(
    frames: np.ndarray | torch.Tensor,
    input_size: int,
    rng: np.random.Generator,
    hflip: bool,
    stats: Stats | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training augmentation of one clip, unfinished: uint8 ``[T, 3, S, S]`` (crop, resize, flip)
    and its colour map ``[3, 9]`` (jitter, greyscale, normalisation; see :func:`finish`)."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    params = draw_train_params(h, w, input_size, rng, hflip)
    x = _crop_resize(_as_tensor(frames), params.box, input_size)
    return (x.flip(-1) if params.flip else x), colour_map(params, stats)


def train_transform(frames: np.ndarray | torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """Training augmentation of one clip: uint8 ``[T, H, W, 3]`` -> float ``[T, 3, S, S]``; the
    arguments of :func:`train_views` (input size, generator, hflip, stats)."""
    return finish(*train_views(frames, *args, **kwargs))


def eval_views(
    frames: np.ndarray | torch.Tensor, input_size: int, num_crops: int = 1, stats: Stats | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation crops of one clip, unfinished: uint8 ``[T, 3, S, S]`` (``[3, T, 3, S, S]`` for
    three crops) and the matching colour map (normalisation only)."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    x = _as_tensor(frames)
    views = [_crop_resize(x, box, input_size) for box in eval_crop_boxes(h, w, input_size, num_crops)]
    colour = colour_map(None, stats)
    if num_crops == 1:
        return views[0], colour
    return torch.stack(views), colour.expand(num_crops, *colour.shape).contiguous()


def eval_transform(
    frames: np.ndarray | torch.Tensor, input_size: int, num_crops: int = 1, stats: Stats | None = None
) -> torch.Tensor:
    """Evaluation views of one clip: ``[T, 3, S, S]`` for one crop, ``[3, T, 3, S, S]`` for three."""
    return finish(*eval_views(frames, input_size, num_crops, stats))


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "Box",
    "Jitter",
    "TrainParams",
    "batch_video",
    "colour_map",
    "colour_affine",
    "draw_train_params",
    "eval_crop_boxes",
    "eval_transform",
    "eval_views",
    "finish",
    "multiscale_crop_box",
    "scale_size",
    "train_transform",
    "train_views",
]
