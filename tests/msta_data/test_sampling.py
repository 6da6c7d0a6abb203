"""TSN segment sampling."""

from __future__ import annotations

import numpy as np
import pytest

from msta.data import segment_indices
from msta.video import DataError


@pytest.mark.parametrize("n", [1, 3, 7, 8, 9, 16, 100, 301])
@pytest.mark.parametrize("t", [1, 8, 16])
def test_one_index_per_segment(n: int, t: int) -> None:
    rng = np.random.default_rng(0)
    for train in (True, False):
        for _ in range(20 if train else 1):
            idx = segment_indices(n, t, train, rng)
            assert len(idx) == t
            assert all(0 <= i < n for i in idx)
            assert idx == sorted(idx)
            if n >= t:
                seg = n / t
                # frame k (the interval [i, i+1)) overlaps segment k
                for k, i in enumerate(idx):
                    assert i + 1 > k * seg - 1e-9 and i < (k + 1) * seg + 1e-9


def test_eval_takes_segment_centres() -> None:
    assert segment_indices(80, 8, False) == [5, 15, 25, 35, 45, 55, 65, 75]
    assert segment_indices(16, 8, False) == [1, 3, 5, 7, 9, 11, 13, 15]


def test_training_offsets_are_random_and_cover_each_segment() -> None:
    rng = np.random.default_rng(1)
    draws = np.array([segment_indices(80, 8, True, rng) for _ in range(2000)])
    for k in range(8):
        col = draws[:, k]
        assert set(col.tolist()) == set(range(10 * k, 10 * k + 10))
        counts = np.bincount(col - 10 * k, minlength=10)
        assert counts.min() > 120  # roughly uniform: 200 expected per position


def test_same_generator_state_gives_same_indices() -> None:
    a = segment_indices(123, 8, True, np.random.default_rng([3, 1, 7]))
    b = segment_indices(123, 8, True, np.random.default_rng([3, 1, 7]))
    c = segment_indices(123, 8, True, np.random.default_rng([3, 2, 7]))
    assert a == b and a != c


def test_short_video_repeats_frames_in_order() -> None:
    assert segment_indices(4, 8, False) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert segment_indices(1, 8, False) == [0] * 8
    idx = segment_indices(3, 8, True, np.random.default_rng(0))
    assert idx == sorted(idx) and set(idx) <= {0, 1, 2}


def test_multi_clip_evaluation_spreads_clips_inside_segments() -> None:
    clips = [segment_indices(40, 4, False, clip=k, num_clips=4) for k in range(4)]
    assert clips == [[1, 11, 21, 31], [3, 13, 23, 33], [6, 16, 26, 36], [8, 18, 28, 38]]
    assert segment_indices(40, 4, False, clip=0, num_clips=1) == segment_indices(40, 4, False)


def test_invalid_arguments() -> None:
    with pytest.raises(DataError):
        segment_indices(0, 8, False)
    with pytest.raises(ValueError):
        segment_indices(10, 0, False)
    with pytest.raises(ValueError):
        segment_indices(10, 8, True, None)
    with pytest.raises(ValueError):
        segment_indices(10, 8, False, clip=2, num_clips=2)
