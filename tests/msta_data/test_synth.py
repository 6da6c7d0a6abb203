"""Synthetic motion datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from msta.checks import check_list
from msta.data import default_hflip, load_classes, read_video_list
from msta.synth import SynthError, draw_clip_params, render_clip, resolve_motions, synth_dataset
from msta.video import open_reader


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "motion"
    synth_dataset(out, videos_per_class=10, val_per_class=6, seed=3)
    return out


def decode_all(path: Path) -> np.ndarray:
    with open_reader(path, "pyav") as r:
        return r.get(list(range(r.num_frames))).astype(np.float32)


def test_layout_lists_classes_and_manifest(synth: Path) -> None:
    manifest = json.loads((synth / "manifest.json").read_text())
    names = load_classes(str(synth / "classes.csv"))
    assert (
        names
        == manifest["classes"]
        == [
            "Sliding rightward",
            "Sliding leftward",
            "Falling downward",
            "Rising upward",
        ]
    )
    assert load_classes(str(synth)) == names  # the dataset directory works as a class spec
    train, val = read_video_list(synth / "train.txt"), read_video_list(synth / "val.txt")
    assert len(train) == 40 and len(val) == 24
    assert manifest["counts"] == {"train": 40, "val": 24}
    assert manifest["hflip"] is False and manifest["frame_order_free_accuracy_ceiling"] == 0.5
    assert default_hflip(str(synth / "classes.csv")) is False and default_hflip(str(synth)) is False
    assert not set(p for p, _ in train) & set(p for p, _ in val)
    assert (synth / "README.md").read_text().startswith("# Synthetic motion dataset")
    assert not [p for p in synth.parent.iterdir() if p.name.startswith(".motion.")]  # no temp dir left


def test_videos_are_playable_mp4(synth: Path) -> None:
    import av

    rel, _ = read_video_list(synth / "train.txt")[0]
    with av.open(str(synth / rel)) as c:
        s = c.streams.video[0]
        assert c.format.name.startswith("mov,mp4")
        assert s.codec_context.name == "h264" and s.format.name == "yuv420p"
        assert (s.width, s.height, s.frames) == (64, 64, 16)
        assert sum(1 for _ in c.decode(s)) == 16
    report = check_list(synth / "val.txt", synth, num_classes=4, workers=2)
    assert report.ok and report.total == 24 and report.per_class == {0: 6, 1: 6, 2: 6, 3: 6}


def test_same_seed_same_videos(tmp_path: Path, synth: Path) -> None:
    again = synth_dataset(tmp_path / "again", videos_per_class=10, val_per_class=6, seed=3)
    assert again.train == 40
    for name in ("train.txt", "val.txt", "classes.csv", "manifest.json"):
        assert (tmp_path / "again" / name).read_bytes() == (synth / name).read_bytes()
    # the rendered frames are identical (x264 may still make a few different coding decisions)
    rel = "videos/val/bottom_to_top_004.mp4"
    assert np.abs(decode_all(tmp_path / "again" / rel) - decode_all(synth / rel)).mean() < 3
    params = draw_clip_params(np.random.default_rng([5, 0, 1]), 64)
    clips = [render_clip("clockwise", params, 8, 64, np.random.default_rng([5, 0, 1, 5])) for _ in range(2)]
    assert np.array_equal(clips[0], clips[1])
    other = synth_dataset(tmp_path / "other", videos_per_class=1, val_per_class=0, seed=4)
    assert other.val == 0
    a = decode_all(synth / "videos/train/left_to_right_000.mp4")
    b = decode_all(tmp_path / "other/videos/train/left_to_right_000.mp4")
    assert np.abs(a - b).mean() > 10


def _nearest_centroid_accuracy(
    train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray]
) -> float:
    xs, ys = train
    xv, yv = val
    centroids = np.stack([xs[ys == c].mean(axis=0) for c in range(4)])
    pred = np.argmin(((xv[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    return float((pred == yv).mean())


def _track(v: np.ndarray) -> np.ndarray:
    """Per-frame centre of the moving shape: pixels far from the per-pixel median over time."""
    fg = np.abs(v - np.median(v, axis=0, keepdims=True)).sum(-1)
    fg = np.where(fg > 0.5 * fg.max(axis=(1, 2), keepdims=True), fg, 0)
    ys, xs = np.mgrid[0 : v.shape[1], 0 : v.shape[2]]
    w = fg.sum(axis=(1, 2)) + 1e-6
    return np.stack([(fg * xs).sum(axis=(1, 2)) / w, (fg * ys).sum(axis=(1, 2)) / w], axis=1)


def test_frame_order_separates_the_classes_but_order_free_features_do_not(synth: Path) -> None:
    def features(list_name: str):
        mean_f, bag_f, order_f, labels = [], [], [], []
        for rel, label in read_video_list(synth / list_name):
            v = decode_all(synth / rel)
            track = _track(v)
            mean_f.append(v.mean(axis=0).ravel())
            bag_f.append(np.concatenate([track.mean(0), track.std(0)]))  # ignores frame order
            t = np.arange(len(track)) - (len(track) - 1) / 2
            order_f.append((t[:, None] * (track - track.mean(0))).sum(0) / (t * t).sum())  # velocity
            labels.append(label)
        return np.array(mean_f), np.array(bag_f), np.array(order_f), np.array(labels)

    m_tr, b_tr, o_tr, y_tr = features("train.txt")
    m_va, b_va, o_va, y_va = features("val.txt")
    # Video k of a class and of its reverse show the same shape on the same background, so their
    # mean frames are (up to noise) the same, and far from the mean frame of another video.
    for k in range(6):
        lr = decode_all(synth / f"videos/val/left_to_right_{k:03d}.mp4").mean(axis=0)
        rl = decode_all(synth / f"videos/val/right_to_left_{k:03d}.mp4").mean(axis=0)
        other = decode_all(synth / f"videos/val/right_to_left_{(k + 1) % 6:03d}.mp4").mean(axis=0)
        assert np.abs(lr - rl).mean() < 0.1 * np.abs(lr - other).mean()
    velocity = _nearest_centroid_accuracy((o_tr, y_tr), (o_va, y_va))
    bag = _nearest_centroid_accuracy((b_tr, y_tr), (b_va, y_va))
    mean_frame = _nearest_centroid_accuracy((m_tr, y_tr), (m_va, y_va))
    assert velocity >= 0.95
    # order-free features can tell the axis of motion (the ceiling is 0.5), never the direction
    assert bag <= 0.5 + 0.1 and mean_frame <= 0.5 + 0.1


def test_motion_sets() -> None:
    assert resolve_motions("horizontal") == ["left_to_right", "right_to_left"]
    assert len(resolve_motions("all")) == 8
    assert resolve_motions("growing,shrinking") == ["growing", "shrinking"]
    with pytest.raises(SynthError, match="reverse"):
        resolve_motions("left_to_right")
    with pytest.raises(SynthError, match="unknown"):
        resolve_motions("jumping")


def test_all_motions_render(tmp_path: Path) -> None:
    res = synth_dataset(
        tmp_path / "all",
        videos_per_class=1,
        val_per_class=0,
        frames=8,
        size=32,
        motions="all",
        style="textured",
    )
    assert res.manifest["style"] == "textured"
    assert len(res.classes) == 8 and res.manifest["frame_order_free_accuracy_ceiling"] == 0.5
    for rel, _ in read_video_list(tmp_path / "all/train.txt"):
        v = decode_all(tmp_path / "all" / rel)
        assert v.shape == (8, 32, 32, 3)
        assert np.abs(v[-1] - v[0]).mean() > 1  # something moves


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(SynthError, match="not empty"):
        synth_dataset(other, videos_per_class=1, val_per_class=0, frames=4, size=32)
    with pytest.raises(SynthError, match="holds no manifest"):
        synth_dataset(other, videos_per_class=1, val_per_class=0, frames=4, size=32, overwrite=True)
    assert (other / "keep.txt").exists()
    with pytest.raises(SynthError):
        synth_dataset(tmp_path / "x", size=33)
    with pytest.raises(SynthError, match="unknown style"):
        synth_dataset(tmp_path / "x", style="fancy")
    assert not (tmp_path / "x").exists()
