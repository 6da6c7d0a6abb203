"""Train and evaluation transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msta.transforms import (
    CLIP_MEAN,
    CLIP_STD,
    Box,
    Jitter,
    TrainParams,
    colour_map,
    draw_train_params,
    eval_crop_boxes,
    eval_transform,
    eval_views,
    finish,
    multiscale_crop_box,
    train_transform,
    train_views,
)


def random_clip(t: int = 8, h: int = 90, w: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(("h", "w", "size"), [(90, 120, 32), (240, 320, 224), (120, 64, 48), (64, 64, 64)])
def test_output_shapes_and_dtype(h: int, w: int, size: int) -> None:
    clip = random_clip(h=h, w=w)
    x = train_transform(clip, size, np.random.default_rng(0), hflip=True)
    assert x.shape == (8, 3, size, size) and x.dtype == torch.float32
    assert eval_transform(clip, size).shape == (8, 3, size, size)
    assert eval_transform(clip, size, num_crops=3).shape == (3, 8, 3, size, size)


def test_train_transform_is_a_function_of_the_generator() -> None:
    clip = random_clip()
    a = train_transform(clip, 32, np.random.default_rng([5, 1, 3]), hflip=True)
    b = train_transform(clip, 32, np.random.default_rng([5, 1, 3]), hflip=True)
    assert torch.equal(a, b)
    others = [train_transform(clip, 32, np.random.default_rng([5, 2, k]), hflip=True) for k in range(4)]
    assert all(not torch.equal(a, o) for o in others)


def test_all_frames_of_a_clip_share_the_random_parameters() -> None:
    frame = random_clip(t=1)[0]
    clip = np.stack([frame] * 6)
    for seed in range(10):
        x = train_transform(clip, 32, np.random.default_rng(seed), hflip=True)
        for t in range(1, 6):
            assert torch.equal(x[0], x[t])


def test_eval_is_deterministic_and_normalised() -> None:
    grey = np.full((4, 50, 70, 3), 128, np.uint8)
    x = eval_transform(grey, 32)
    expected = torch.tensor([(128 / 255 - m) / s for m, s in zip(CLIP_MEAN, CLIP_STD, strict=True)])
    assert torch.allclose(x.mean(dim=(0, 2, 3)), expected, atol=1e-5)
    clip = random_clip()
    assert torch.equal(eval_transform(clip, 32), eval_transform(clip, 32))


def test_flip_only_when_enabled() -> None:
    # left half dark, right half bright: flipped output has the bright half on the left
    clip = np.zeros((2, 64, 64, 3), np.uint8)
    clip[:, :, 32:] = 255
    flips = 0
    for seed in range(200):
        p = draw_train_params(64, 64, 64, np.random.default_rng(seed), hflip=True)
        flips += p.flip
        assert not draw_train_params(64, 64, 64, np.random.default_rng(seed), hflip=False).flip
    assert 70 < flips < 130
    for seed in range(30):
        x = train_transform(clip, 64, np.random.default_rng(seed), hflip=False)
        assert x[0, :, :, :8].mean() < x[0, :, :, -8:].mean()


def test_jitter_and_grey_probabilities() -> None:
    params = [draw_train_params(100, 100, 64, np.random.default_rng(s), hflip=True) for s in range(1000)]
    jitter = sum(p.jitter is not None for p in params) / 1000
    grey = sum(p.grey for p in params) / 1000
    assert 0.75 < jitter < 0.85 and 0.15 < grey < 0.25
    for p in params:
        if p.jitter is not None:
            assert 0.6 <= p.jitter.brightness <= 1.4 and -0.1 <= p.jitter.hue <= 0.1
            assert sorted(p.jitter.order) == [0, 1, 2, 3]
    # greyscale output has equal channels before normalisation
    clip = random_clip(t=2, h=40, w=40)
    for s, p in enumerate(params):
        if p.grey:
            x = train_transform(clip, 32, np.random.default_rng(s), hflip=False)
            raw = x * torch.tensor(CLIP_STD).view(1, 3, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
            assert torch.allclose(raw[:, 0], raw[:, 1], atol=1e-5) and torch.allclose(
                raw[:, 1], raw[:, 2], atol=1e-5
            )
            break
    else:
        pytest.fail("no greyscale draw")


@pytest.mark.parametrize(("h", "w"), [(240, 320), (320, 240), (64, 64), (100, 400)])
def test_multiscale_crops_stay_inside_and_use_the_scales(h: int, w: int) -> None:
    size = 224
    short = min(h, w)
    ratios = set()
    for seed in range(300):
        box = multiscale_crop_box(h, w, size, np.random.default_rng(seed))
        assert 0 <= box.x and box.x + box.w <= w and 0 <= box.y and box.y + box.h <= h
        ratios.add(round(box.w / short, 2))
        ratios.add(round(box.h / short, 2))
        assert max(box.w, box.h) <= short + 1
    assert min(ratios) >= 0.64 and max(ratios) <= 1.0 and len(ratios) >= 4


def test_three_crops_cover_the_long_side() -> None:
    boxes = eval_crop_boxes(240, 320, 224, num_crops=3)
    assert [b.x for b in boxes] == [0, 40, 80] and all(b.w == b.h == 240 for b in boxes)
    assert {b.y for b in boxes} == {0}
    tall = eval_crop_boxes(320, 240, 224, num_crops=3)
    assert [b.y for b in tall] == [0, 40, 80]
    (centre,) = eval_crop_boxes(256, 256, 224, num_crops=1)
    assert (centre.x, centre.y, centre.w, centre.h) == (16, 16, 224, 224)


def _torchvision_jitter(x: torch.Tensor, j) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    ops = {
        0: lambda v: TF.adjust_brightness(v, j.brightness),
        1: lambda v: TF.adjust_contrast(v, j.contrast),
        2: lambda v: TF.adjust_saturation(v, j.saturation),
        3: lambda v: TF.adjust_hue(v, j.hue),
    }
    for op in j.order:
        x = ops[op](x)
    return x


@pytest.mark.parametrize("order", [(0, 1, 2, 3), (3, 2, 1, 0), (1, 3, 0, 2), (2, 0, 3, 1)])
def test_colour_map_equals_torchvision_jitter_without_clamping(order) -> None:
    # mid-range pixels: torchvision's intermediate clamps never bite, so the two must agree
    rng = np.random.default_rng(len(order) + order[0])
    clip = torch.as_tensor(rng.integers(90, 166, size=(3, 3, 20, 24), dtype=np.uint8))
    jitter = Jitter(brightness=1.15, contrast=0.8, saturation=1.25, hue=0.0, order=order)
    params = TrainParams(box=Box(0, 0, 24, 20), flip=False, jitter=jitter, grey=False)
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    got = finish(clip, colour_map(params, unit))
    want = _torchvision_jitter(clip.float() / 255, jitter)
    assert torch.allclose(got, want, atol=1e-5)
    # with normalisation folded in, the same up to the affine change of units
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    assert torch.allclose(finish(clip, colour_map(params)), (want - mean) / std, atol=1e-4)


def test_hue_turns_colours_about_the_grey_axis() -> None:
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    pixels = torch.tensor([[200, 40, 40], [128, 128, 128], [40, 160, 90]], dtype=torch.uint8)
    clip = pixels.T.reshape(1, 3, 1, 3)  # one frame, three pixels in a row

    def hue(turns: float) -> torch.Tensor:
        j = Jitter(brightness=1.0, contrast=1.0, saturation=1.0, hue=turns, order=(3, 0, 1, 2))
        return finish(clip, colour_map(TrainParams(Box(0, 0, 3, 1), False, j, False), unit))[0, :, 0].T

    assert torch.allclose(hue(0.0), pixels.float() / 255, atol=1e-6)
    assert torch.allclose(hue(0.08)[1], torch.full((3,), 128 / 255), atol=1e-6)  # grey stays grey
    red = hue(0.08)[0]
    assert red[1] > red[2] + 0.1  # red turns towards yellow (green rises), as torchvision's hue shift does
    ref = _torchvision_jitter(pixels.T.reshape(1, 3, 1, 3).float() / 255, Jitter(1, 1, 1, 0.08, (3,)))
    assert torch.sign(red[1] - red[2]) == torch.sign(ref[0, 1, 0, 0] - ref[0, 2, 0, 0])


def test_finish_works_on_batches_of_clips_and_views() -> None:
    frames = [random_clip(t=4, h=60, w=80, seed=s) for s in range(3)]
    views = [train_views(f, 32, np.random.default_rng(s), hflip=True) for s, f in enumerate(frames)]
    batch = finish(torch.stack([v for v, _ in views]), torch.stack([c for _, c in views]))
    for k, (v, c) in enumerate(views):
        assert torch.equal(batch[k], finish(v, c))
    v3, c3 = eval_views(frames[0], 32, num_crops=3)
    assert v3.shape == (3, 4, 3, 32, 32) and c3.shape == (3, 3, 9)
    assert torch.equal(finish(v3, c3), eval_transform(frames[0], 32, num_crops=3))
