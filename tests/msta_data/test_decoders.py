"""PyAV, decord and frame-folder readers on real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msta.synth import draw_clip_params, render_clip, write_video
from msta.video import DataError, VideoReadError, decord_available, open_reader

from . import counter_frames, read_counter, write_frames_video

needs_decord = pytest.mark.skipif(not decord_available(), reason="decord not installed")


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    d = tmp_path_factory.mktemp("decoders")
    params = draw_clip_params(np.random.default_rng(3), 64)
    frames = render_clip("left_to_right", params, 20, 64, np.random.default_rng(4))
    path = d / "clip.mp4"
    write_video(path, frames, fps=16)
    return path, frames


@pytest.fixture(scope="module")
def long_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A 600-frame video with a keyframe every 30 frames, frames carrying their index."""
    path = tmp_path_factory.mktemp("long") / "long.mp4"
    n = 600
    write_frames_video(path, counter_frames(n), fps=25, gop=30)
    return path, n


def all_frames_pyav(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


def test_pyav_reads_what_was_written(clip_file: tuple[Path, np.ndarray]) -> None:
    path, frames = clip_file
    with open_reader(path, "pyav") as r:
        assert r.num_frames == 20
        got = r.get([0, 5, 5, 19, 2])
    assert got.shape == (5, 64, 64, 3) and got.dtype == np.uint8
    assert np.array_equal(got[1], got[2])
    # lossy (yuv420p), but each decoded frame is closest to its own source frame
    for g, i in zip(got, [0, 5, 5, 19, 2], strict=True):
        errors = np.abs(g.astype(int)[None] - frames).mean(axis=(1, 2, 3))
        assert int(np.argmin(errors)) == i and errors[i] < 10


@needs_decord
def test_pyav_and_decord_agree(clip_file: tuple[Path, np.ndarray]) -> None:
    path, _ = clip_file
    idx = [0, 1, 7, 7, 13, 19, 4]
    with open_reader(path, "pyav") as a, open_reader(path, "decord") as b:
        assert a.num_frames == b.num_frames == 20
        fa, fb = a.get(idx), b.get(idx)
    assert fa.shape == fb.shape
    assert np.abs(fa.astype(int) - fb).max() <= 2


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_frame_folder_matches_the_video(tmp_path: Path, clip_file: tuple[Path, np.ndarray], ext: str) -> None:
    path, _ = clip_file
    decoded = all_frames_pyav(path)
    folder = tmp_path / "frames"
    folder.mkdir()
    # written in shuffled order with unpadded-looking names to check natural sorting
    for i in np.random.default_rng(0).permutation(len(decoded)):
        Image.fromarray(decoded[i]).save(folder / f"img_{i + 1:05d}.{ext}", quality=95)
    (folder / "notes.txt").write_text("not a frame")
    idx = [0, 3, 3, 10, 19]
    with open_reader(folder, "pyav") as r:  # a directory is always read as frames
        assert r.num_frames == 20
        got = r.get(idx)
    with open_reader(folder, "frames") as r:
        assert np.array_equal(r.get(idx), got)
    tol = 0 if ext == "png" else 12
    assert np.abs(got.astype(int) - decoded[idx]).mean() <= tol


def test_natural_order_of_frame_names(tmp_path: Path) -> None:
    for i in (1, 2, 10):
        Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(tmp_path / f"frame{i}.png")
    with open_reader(tmp_path, "frames") as r:
        assert r.get([0, 1, 2])[:, 0, 0, 0].tolist() == [20, 40, 200]


@pytest.mark.parametrize("decoder", ["pyav", pytest.param("decord", marks=needs_decord)])
def test_long_video_random_access_returns_the_right_frames(long_file: tuple[Path, int], decoder: str) -> None:
    path, n = long_file
    rng = np.random.default_rng(0)
    with open_reader(path, decoder) as r:
        assert r.num_frames == n
        for _ in range(3):
            idx = sorted(rng.choice(n, size=8, replace=False).tolist())
            got = r.get(idx)
            assert [read_counter(f) for f in got] == idx
        # unsorted request, far gaps backwards and forwards
        idx = [590, 3, 299, 300, 3]
        assert [read_counter(f) for f in r.get(idx)] == idx


def test_pyav_seeks_instead_of_decoding_everything(long_file: tuple[Path, int]) -> None:
    path, n = long_file
    with open_reader(path, "pyav") as r:
        decoded = 0
        original = r._frames_from

        def counting(target):  # count frames the reader pulls from the decoder
            nonlocal decoded
            for frame in original(target):
                decoded += 1
                yield frame

        r._frames_from = counting
        got = r.get([580, 590])
    assert [read_counter(f) for f in got] == [580, 590]
    assert decoded < 80  # from the keyframe at 570, not from frame 0


def test_frame_count_without_container_metadata(tmp_path: Path) -> None:
    """Matroska does not store a frame count: it is counted from packets."""
    path = tmp_path / "clip.mkv"
    write_frames_video(path, counter_frames(37), fps=25, gop=10)
    with open_reader(path, "pyav") as r:
        assert r.num_frames == 37
        assert [read_counter(f) for f in r.get([0, 36, 20])] == [0, 36, 20]


@pytest.mark.parametrize("decoder", ["pyav", pytest.param("decord", marks=needs_decord)])
def test_missing_and_corrupt_files_raise_video_read_error(tmp_path: Path, clip_file, decoder: str) -> None:
    with pytest.raises(VideoReadError, match="not found"):
        open_reader(tmp_path / "nope.mp4", decoder)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(VideoReadError):
        with open_reader(junk, decoder) as r:
            r.get([0])
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip_file[0].read_bytes()[:600])
    with pytest.raises(VideoReadError):
        with open_reader(truncated, decoder) as r:
            r.get([0])
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(VideoReadError, match="no images"):
        open_reader(empty, decoder)


def test_unknown_decoder_and_bad_indices(clip_file) -> None:
    with pytest.raises(DataError, match="unknown decoder"):
        open_reader(clip_file[0], "ffmpeg-cli")
    with pytest.raises(VideoReadError, match="not a folder of frames"):
        open_reader(clip_file[0], "frames")
    with open_reader(clip_file[0]) as r:
        with pytest.raises(IndexError):
            r.get([20])
