"""Prepared video data (``msta data prepare``): same frames and clips as raw decoding, corrupt videos,
shards, interrupted runs, and ``msta data bench``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from msta.data import VideoDataset
from msta.prepare import Encoding, prepare_list, prepare_one
from msta.video import DataError, VideoReadError, is_prepared, open_reader, prepared_path
from tests.msta_train import REPO, msta_cmd, run_msta_process, subprocess_env

from . import counter_frames, read_counter, write_frames_video


def smooth_frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """A lit gradient scene with a moving coloured disk (the kind of content real videos have)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([xx / w * 200, yy / h * 180, (xx + yy) / (w + h) * 160 + 40], -1)
    colour = rng.integers(60, 255, size=3)
    out = np.empty((n, h, w, 3), np.uint8)
    for t in range(n):
        img = base.copy()
        cx, cy = w * (0.2 + 0.6 * t / n), h * (0.4 + 0.2 * np.sin(t / 3))
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < (h / 5) ** 2] = colour
        out[t] = np.clip(img, 0, 255)
    return out


def _write_list(root: Path, lines: list[str]) -> Path:
    path = root / "list.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def videos(tmp_path: Path) -> tuple[Path, Path]:
    """A raw root with two smooth videos (one larger than the stored short side) and a list."""
    root = tmp_path / "raw"
    (root / "a").mkdir(parents=True)
    write_frames_video(root / "a" / "small.mp4", smooth_frames(30, 96, 128, 0), gop=12)
    write_frames_video(root / "big.mp4", smooth_frames(24, 160, 208, 1), gop=12)
    return root, _write_list(root, ["a/small.mp4 0", "big.mp4 1"])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)  # values in [0, 1]


def test_frame_indices_are_those_of_the_raw_video(tmp_path):
    src, dst = tmp_path / "c.mp4", tmp_path / "out" / "c.mp4.jpgs"
    write_frames_video(src, counter_frames(40), gop=7)
    info = prepare_one(src, dst)
    assert info["status"] == "done" and info["frames"] == 40
    with open_reader(dst) as r, open_reader(src) as raw:
        assert r.num_frames == raw.num_frames == 40
        idx = [39, 0, 17, 17, 5]
        assert [read_counter(f) for f in r.get(idx)] == idx
    assert prepare_one(src, dst)["status"] == "skipped"


def test_raw_codec_stores_the_decoded_frames_exactly(tmp_path):
    src, dst = tmp_path / "s.mp4", tmp_path / "out" / "s.mp4.rgbs"
    write_frames_video(src, smooth_frames(20, 96, 128, 3), gop=6)
    info = prepare_one(src, dst, Encoding(codec="raw"))
    assert info["status"] == "done" and info["bytes"] > 20 * 96 * 128 * 3
    idx = [19, 0, 7, 7, 12]
    with open_reader(dst) as r, open_reader(src) as raw:
        assert r.codec == "raw" and r.num_frames == raw.num_frames == 20
        assert np.array_equal(r.get(idx), raw.get(idx))
    with open(dst, "r+b") as f:  # a bank cut short: never read as valid, and prepared again
        f.truncate(info["bytes"] - 5)
    with open_reader(dst) as r, pytest.raises(VideoReadError, match="truncated"):
        r.get([19])
    assert prepare_one(src, dst, Encoding(codec="raw"))["status"] == "done"


PREPARED_VARIANTS = [("1x1", {"chroma": "444"}), ("2x3", {"chroma": "444"}), ("1x1", {"chroma": "420"}),
                     ("1x1", {"codec": "raw"})]  # fmt: skip


@pytest.mark.parametrize(("views", "options"), PREPARED_VARIANTS)
def test_prepared_eval_clips_match_raw_decoding(videos, tmp_path, views, options):
    root, list_file = videos
    out = tmp_path / "prep"
    res = prepare_list(list_file, root, out, short_side=128, **options)
    assert res.prepared == 2 and not res.failed and res.manifest_written and is_prepared(out)
    manifest = json.loads((out / "prepared.json").read_text())
    assert {k: manifest.get(k, "jpeg") for k in options} == options
    codec = options.get("codec", "jpeg")
    with open_reader(prepared_path(out, "big.mp4", codec)) as r:
        assert (r.height, r.width) == (128, 166)  # short side brought down to 128
    items = [("a/small.mp4", 0), ("big.mp4", 1)]
    unit = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))  # no normalisation: clips in [0, 1] pixel units
    kw = dict(num_frames=8, train=False, input_size=112, hflip=False, views=views, stats=unit)
    raw_ds, prep_ds = VideoDataset(items, root, **kw), VideoDataset(items, out, **kw)
    assert prep_ds.codec == codec and not raw_ds.prepared
    for i in range(2):
        a, b = raw_ds[i], prep_ds[i]
        assert a["video"].shape == b["video"].shape and b["skipped"] == 0
        value = psnr(a["video"].numpy(), b["video"].numpy())
        assert value >= 35.0, (i, value)


def test_training_clips_from_prepared_data(videos, tmp_path):
    root, list_file = videos
    out = tmp_path / "prep"
    prepare_list(list_file, root, out, workers=2)
    ds = VideoDataset([("a/small.mp4", 0), ("big.mp4", 1)], out, 4, True, 64, hflip=True)
    sample = ds[1]
    assert tuple(sample["video"].shape) == (4, 3, 64, 64) and sample["label"] == 1


@pytest.mark.parametrize("codec", ["jpeg", "raw"])
def test_corrupt_video_is_listed_and_replaced(videos, tmp_path, msta_cli, codec):
    root, _ = videos
    (root / "broken.mp4").write_bytes(b"\x00\x00\x00 ftypisom" + os.urandom(2000))
    list_file = _write_list(root, ["a/small.mp4 0", "broken.mp4 1", "missing.mp4 1", "big.mp4 1"])
    out = tmp_path / "prep"
    res = msta_cli(["data", "prepare", "--list", list_file, "--root", root, "--out", out, "--workers", "2",
                    "--codec", codec])  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "2 videos prepared" in res.stdout and "2 unreadable" in res.stdout
    manifest = json.loads((out / "prepared.json").read_text())
    assert sorted(manifest["failed"]) == ["broken.mp4", "missing.mp4"] and manifest["num_videos"] == 2
    report = (out / "prepare-report.txt").read_text()
    assert "broken.mp4" in report and "missing.mp4" in report
    ds = VideoDataset([("broken.mp4", 1)] + [("big.mp4", 1)] * 3, out, 4, False, 64, hflip=False)
    assert ds[0]["skipped"] >= 1 and ds[0]["source"] != 0
    assert ds[1]["skipped"] == 0 and ds.path_of(1) == prepared_path(out, "big.mp4", codec)
    assert ds.path_of(1).is_file()
    with pytest.raises(VideoReadError):
        open_reader(prepared_path(out, "broken.mp4", codec))
    check = msta_cli(["data", "check", "--list", list_file, "--root", out, "--json"])
    assert check.returncode == 1
    found = json.loads(check.stdout)
    assert [p["path"] for p in found["unreadable"]] == ["broken.mp4", "missing.mp4"] and not found["missing"]


def test_shards_write_the_manifest_when_all_parts_exist(videos, tmp_path):
    root, _ = videos
    for k in range(3):
        write_frames_video(root / f"v{k}.mp4", smooth_frames(10, 64, 64, k + 5), gop=5)
    list_file = _write_list(root, ["a/small.mp4 0", "big.mp4 1", "v0.mp4 0", "v1.mp4 1", "v2.mp4 0"])
    out = tmp_path / "prep"
    first = prepare_list(list_file, root, out, shard="1/2")
    assert first.total == 2 and not first.manifest_written and not is_prepared(out)
    second = prepare_list(list_file, root, out, shard="0/2")
    assert second.total == 3 and second.manifest_written
    manifest = json.loads((out / "prepared.json").read_text())
    assert manifest["num_videos"] == 5 and not manifest["failed"]
    again = prepare_list(list_file, root, out)  # a final run without --shard: nothing left to do
    assert again.skipped == 5 and again.prepared == 0 and again.manifest_written


def test_bad_chroma_is_a_user_error(videos, tmp_path, msta_cli):
    root, list_file = videos
    out = tmp_path / "prep"
    res = msta_cli(["data", "prepare", "--list", list_file, "--root", root, "--out", out, "--chroma", "422"])
    assert res.returncode == 2 and res.stderr.startswith("error: chroma must be one of 444, 420")
    assert not out.exists()


def test_bad_codec_and_mixed_codecs_are_user_errors(videos, tmp_path, msta_cli):
    root, list_file = videos
    out = tmp_path / "prep"
    res = msta_cli(["data", "prepare", "--list", list_file, "--root", root, "--out", out, "--codec", "png"])
    assert res.returncode == 2 and res.stderr.startswith("error: codec must be one of jpeg, raw")
    prepare_list(list_file, root, out, codec="raw")
    with pytest.raises(DataError, match=r"holds frames stored with codec raw \(not jpeg\)"):
        prepare_list(list_file, root, out)
    with pytest.raises(DataError, match=r"holds frames stored with short_side 256 \(not 128\)"):
        prepare_list(list_file, root, out, codec="raw", short_side=128)
    assert not list(out.glob("videos/**/*.jpgs"))


def test_bad_shard_is_a_user_error(videos, tmp_path, msta_cli):
    root, list_file = videos
    res = msta_cli(["data", "prepare", "--list", list_file, "--root", root, "--out", tmp_path / "p",
                    "--shard", "2/2"])  # fmt: skip
    assert res.returncode == 2 and res.stderr.startswith("error: --shard 2/2")


def test_killed_prepare_leaves_nothing_valid_half_written_and_a_rerun_finishes(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    n = 12
    for k in range(n):
        write_frames_video(root / f"v{k:02d}.mp4", smooth_frames(60, 144, 192, k), gop=30)
    list_file = _write_list(root, [f"v{k:02d}.mp4 {k % 2}" for k in range(n)])
    out = tmp_path / "prep"
    args = ["data", "prepare", "--list", str(list_file), "--root", str(root), "--out", str(out),
            "--workers", "2"]  # fmt: skip
    # A session of its own: the run and its worker processes are killed together.
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen(
        [*msta_cmd(), *args], cwd=str(REPO), env=subprocess_env(), start_new_session=True, **quiet
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list((out / "videos").glob("*.jpgs"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "prepare finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the run and its worker processes
    proc.wait(timeout=30)
    assert not is_prepared(out)
    done = sorted(out.glob("videos/*.jpgs"))
    assert 2 <= len(done) < n
    for p in done:  # every file under a final name is complete
        with open_reader(p) as r:
            assert r.num_frames == 60 and r.get([59]).shape == (1, 144, 192, 3)
    res = run_msta_process(args, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{n - len(done)} videos prepared, {len(done)} already there, 0 unreadable" in res.stdout
    assert is_prepared(out) and not list(out.glob("videos/*.tmp-*"))
    assert json.loads((out / "prepared.json").read_text())["num_videos"] == n


def test_bench_json(videos, tmp_path, msta_cli):
    root, list_file = videos
    prepare_list(list_file, root, tmp_path / "prep")
    prepare_list(list_file, root, tmp_path / "raw-prep", codec="raw")
    for where, codec in ((tmp_path / "prep", "jpeg"), (tmp_path / "raw-prep", "raw"), (root, None)):
        res = msta_cli(["data", "bench", "--list", list_file, "--root", where, "--clips", "3",
                        "--workers", "0", "--size", "32", "--frames", "2", "--json"])  # fmt: skip
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["clips_per_s"] > 0 and out["clips"] == 3 and out["prepared"] is (codec is not None)
        assert out["codec"] == codec
        assert {"seconds", "workers", "batch_size", "frames", "input_size"} <= set(out)
