"""Data-loading throughput: raw videos decoded with PyAV vs the same videos prepared by
``msta data prepare``, through the real training loader.

Writes real mp4 files of realistic length (default 10 s at 25 fps, 320x240, H.264 with the encoder's
default keyframe interval) into a temporary directory, prepares them three times (JPEG with
``--chroma 444``, the default, JPEG with ``--chroma 420``, and ``--codec raw``), then loads 8-frame training clips at 224 px (training transforms, collation)
through ``VideoDataset`` and a ``DataLoader`` with 2 worker processes from each, as training does
(the workers deliver uint8 clips; colour augmentation and normalisation run on the training
device), and prints side by side: clips/s, clips/s per core, the ratios, the cores that would keep
up with a GPU consuming 470 and 870 clips/s, preparation throughput and the bytes stored per video.
The first batches of every row (worker start-up) are not timed.

    python bench/dataload.py [--videos 16] [--clips 64] [--seconds 10] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

GPU_RATES = (470, 870)  # clips/s one H200 trains at (MSTA d128 bf16 batch 32; and a faster setting)
VARIANTS = {  # row name: msta data prepare options
    "prep 444": {"chroma": "444"},
    "prep 420": {"chroma": "420"},
    "prep raw": {"codec": "raw"},
}


def make_video(path: Path, seconds: float, fps: int, width: int, height: int, seed: int) -> None:
    """A moving textured scene with a moving object and light noise, H.264 at the encoder's
    default settings (keyframe interval 250: one keyframe in a 10 s video)."""
    import av

    rng = np.random.default_rng(seed)
    n = int(round(seconds * fps))
    texture = rng.integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3)).astype(np.float32)
    texture = np.kron(texture, np.ones((8, 8, 1), np.float32))  # blocky background, larger than the frame
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for t in range(n):
            dx, dy = int(8 * np.sin(t / 20)) + 8, int(6 * np.cos(t / 25)) + 8
            img = texture[dy : dy + height, dx : dx + width].copy()
            cx, cy = width * (0.2 + 0.6 * t / n), height * (0.5 + 0.2 * np.sin(t / 10))
            img[(xx - cx) ** 2 + (yy - cy) ** 2 < (height / 6) ** 2] = (230, 40, 40)
            img += rng.normal(0, 4, size=img.shape).astype(np.float32)
            frame = av.VideoFrame.from_ndarray(np.clip(img, 0, 255).astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def breakdown(root: Path, rels: list[str], size: int, frames: int) -> tuple[float, ...]:
    """Mean milliseconds per clip, in this process: reading (decoding), the loader's transforms (crop,
    resize, flip, colour map) and the finishing step that training runs on its device (colour
    augmentation and normalisation; here on this CPU)."""
    from msta.data import segment_indices
    from msta.transforms import finish, train_views
    from msta.video import open_reader, prepared_codec, video_path

    rng = np.random.default_rng(0)
    codec = prepared_codec(root)
    times = np.zeros(3)
    for rel in rels:
        t0 = time.perf_counter()
        with open_reader(video_path(root, rel, codec)) as reader:
            clip = reader.get(segment_indices(reader.num_frames, frames, True, rng))
        t1 = time.perf_counter()
        video, colour = train_views(clip, size, rng, hflip=True)
        t2 = time.perf_counter()
        finish(video, colour)
        times += (t1 - t0, t2 - t1, time.perf_counter() - t2)
    return tuple(1000 * times / len(rels))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=16, help="distinct video files")
    ap.add_argument("--clips", type=int, default=64, help="clips loaded per row")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=240)
    ap.add_argument("--size", type=int, default=224, help="input size S")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers, and preparation processes")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="dataload-bench-") as tmp:
        root = Path(tmp) / "raw"
        root.mkdir()
        t0 = time.perf_counter()
        items = [(f"v{i}.mp4", 0) for i in range(args.videos)]
        for i, (rel, _) in enumerate(items):
            make_video(root / rel, args.seconds, args.fps, args.width, args.height, seed=i)
        (root / "list.txt").write_text("".join(f"{rel} 0\n" for rel, _ in items))
        print(
            f"{args.videos} videos: {args.seconds:g} s at {args.fps} fps, {args.width}x{args.height}, H.264 "
            f"(default GOP), written in {time.perf_counter() - t0:.1f} s"
        )
        rows = {"raw pyav": root}
        for name, options in VARIANTS.items():
            rows[name] = Path(tmp) / name.replace(" ", "-")
            report_prepare(root, rows[name], args, options)
        rels = [rel for rel, _ in items]
        breakdown(root, rels[:1], args.size, args.frames)  # warm-up (lazy imports)
        for name, where in rows.items():
            read, tf, fin = breakdown(where, rels, args.size, args.frames)
            print(
                f"{name}: {read:.1f} ms reading + {tf:.1f} ms transforming per clip in a loader worker; "
                f"then {fin:.1f} ms finishing (colour, normalisation) on the training device (here: the CPU)"
            )
        report_loader(items, rows, args)


def report_prepare(root: Path, out: Path, args: argparse.Namespace, options: dict[str, str]) -> None:
    from msta.prepare import prepare_list

    prep = prepare_list(root / "list.txt", root, out, workers=args.workers, **options)
    per_core = args.videos / prep.seconds / max(1, args.workers)
    flags = " ".join(f"--{k} {v}" for k, v in options.items())
    print(
        f"prepare {flags}: {args.videos} videos in {prep.seconds:.1f} s with {args.workers} processes = "
        f"{per_core:.2f} videos/s per core; {prep.bytes_out / args.videos / 1e6:.2f} MB per video "
        f"vs {prep.bytes_source / args.videos / 1e6:.2f} MB source ({prep.bytes_out / prep.bytes_source:.1f}x)"
    )


def report_loader(items: list[tuple[str, int]], rows: dict[str, Path], args) -> None:
    from msta.data import loader_throughput

    print(
        f"training loader: {args.frames} frames at {args.size} px, {args.clips} clips, {args.workers} workers"
    )
    print(
        f"{'data':<9} {'clips/s':>9} {'per core':>9} "
        + " ".join(f"{'cores@' + str(r):>10}" for r in GPU_RATES)
    )
    rates = {}
    for name, where in rows.items():
        res = loader_throughput(
            items, where, workers=args.workers, clips=args.clips, input_size=args.size,
            num_frames=args.frames, batch_size=args.batch_size,
        )  # fmt: skip
        rate = rates[name] = res["clips_per_s"]
        core = rate / max(1, args.workers)
        need = " ".join(f"{int(np.ceil(r / core)):>10d}" for r in GPU_RATES)
        print(f"{name:<9} {rate:>9.2f} {core:>9.2f} {need}", flush=True)
    for name in VARIANTS:
        ratio = rates[name] / rates["raw pyav"]
        print(f"{name} / raw pyav: {ratio:.1f}x (goal: at least 10x)")


if __name__ == "__main__":
    main()
