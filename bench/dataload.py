"""Data-loading throughput: clips per second decoded, sampled and transformed.

Writes a few real mp4 files of realistic length (default 10 s at 25 fps, 320x240, H.264) into a
temporary directory, then loads 8-frame training clips at 224 px through ``VideoDataset`` and a
``DataLoader`` with PyAV and decord, with 0 and 2 worker processes, and prints clips/second side by
side. The first batch of every configuration (worker start-up) is not timed.

    python bench/dataload.py [--videos 6] [--clips 48] [--seconds 10] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def make_video(path: Path, seconds: float, fps: int, width: int, height: int, seed: int) -> None:
    """A moving textured scene with a moving object and light noise, encoded with libx264."""
    from msta.synth import write_video

    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    texture = rng.integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 1), np.float32))  # blocky background, larger than the frame
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        dx, dy = int(8 * np.sin(t / 20)) + 8, int(6 * np.cos(t / 25)) + 8
        img = texture[dy : dy + height, dx : dx + width].copy()
        cx, cy = width * (0.2 + 0.6 * t / n), height * (0.5 + 0.2 * np.sin(t / 10))
        inside = (xx - cx) ** 2 + (yy - cy) ** 2 < (height / 6) ** 2
        img[inside] = (230, 40, 40)
        img += rng.normal(0, 4, size=img.shape).astype(np.float32)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
    write_video(path, frames, fps=fps)


def bench(
    root: Path, items: list[tuple[str, int]], decoder: str, workers: int, clips: int, size: int, frames: int
) -> float:
    import torch
    from torch.utils.data import DataLoader

    from msta.data import VideoDataset

    reps = max(1, -(-clips // len(items)))
    ds = VideoDataset((items * reps)[:clips], root, frames, True, size, hflip=True, decoder=decoder, seed=0)
    loader = DataLoader(ds, batch_size=4, num_workers=workers, shuffle=False)
    it = iter(loader)
    first = next(it)
    done = first["video"].shape[0]
    start = time.perf_counter()
    for batch in it:
        done += batch["video"].shape[0]
        assert batch["video"].shape[1:] == (frames, 3, size, size) and batch["video"].dtype == torch.float32
    elapsed = time.perf_counter() - start
    timed = done - first["video"].shape[0]
    return timed / elapsed if elapsed > 0 else float("nan")


def breakdown(
    root: Path, items: list[tuple[str, int]], decoder: str, size: int, frames: int
) -> tuple[float, float]:
    """Mean seconds per clip spent decoding and transforming, in this process."""
    from msta.data import segment_indices
    from msta.transforms import train_transform
    from msta.video import open_reader

    rng = np.random.default_rng(0)
    t_dec = t_tf = 0.0
    clip = None
    for rel, _ in items:
        t0 = time.perf_counter()
        with open_reader(root / rel, decoder) as reader:
            clip = reader.get(segment_indices(reader.num_frames, frames, True, rng))
        t1 = time.perf_counter()
        train_transform(clip, size, rng, hflip=True)
        t_dec += t1 - t0
        t_tf += time.perf_counter() - t1
    return t_dec / len(items), t_tf / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=6, help="distinct video files")
    ap.add_argument("--clips", type=int, default=48, help="clips loaded per configuration")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--size", type=int, default=224, help="input size S")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--decoders", nargs="+", default=["pyav", "decord"])
    args = ap.parse_args()

    import torch

    from msta.video import decord_available

    torch.set_num_threads(1)  # a fair per-process comparison; workers use one thread each anyway
    with tempfile.TemporaryDirectory(prefix="dataload-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        items = []
        for i in range(args.videos):
            rel = f"v{i}.mp4"
            make_video(root / rel, args.seconds, args.fps, args.width, args.height, seed=i)
            items.append((rel, 0))
        mb = sum((root / r).stat().st_size for r, _ in items) / 1e6
        print(
            f"{args.videos} videos: {args.seconds:g} s at {args.fps} fps, {args.width}x{args.height}, "
            f"H.264, {mb:.1f} MB, written in {time.perf_counter() - t0:.1f} s"
        )
        print(f"clips of {args.frames} frames, train transform at {args.size} px, {args.clips} clips per row")
        for decoder in args.decoders:
            if decoder == "decord" and not decord_available():
                continue
            breakdown(root, items[:1], decoder, args.size, args.frames)  # warm-up (lazy imports)
            dec, tf = breakdown(root, items, decoder, args.size, args.frames)
            print(
                f"{decoder}: {1000 * dec:.0f} ms decoding + {1000 * tf:.0f} ms transforming per clip (one process)"
            )
        print(f"{'decoder':<8} {'workers':>7} {'clips/s':>9} {'vs pyav/0':>10}")
        base = None
        for decoder in args.decoders:
            if decoder == "decord" and not decord_available():
                print(f"{decoder:<8} (not installed)")
                continue
            for w in args.workers:
                rate = bench(root, items, decoder, w, args.clips, args.size, args.frames)
                base = base or rate
                print(f"{decoder:<8} {w:>7} {rate:>9.2f} {rate / base:>9.2f}x", flush=True)


if __name__ == "__main__":
    main()
