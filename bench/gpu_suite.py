"""The GPU figures in one run: the training step of MSTA against full fine-tuning (eager and under
``torch.compile``), and the step fed end to end by the real data loader from prepared videos.

    python bench/gpu_suite.py                       # on a CUDA machine: a few minutes
    python bench/gpu_suite.py --out $OUT/suite.json # every result also as JSON, written after each part

Parts, each printed as soon as it is done (and added to the JSON file, so a run cut short keeps
what it measured):

1. ``bench/train_step.py`` on random tensors: MSTA d256 in blocks 1-12, MSTA d128 in blocks 8-12 and
   full fine-tuning; bf16 autocast, batch 32, 8 frames, ViT-B/16 with random weights. Prints step
   time, clips/s, FLOPs, TFLOP/s, model FLOP utilisation and the goals.
2. The same under ``torch.compile`` (``--no-compile`` skips it).
3. End to end: writes ``--videos`` synthetic 10 s 320x240 H.264 videos, prepares them with
   ``msta data prepare`` (``--codec``, default ``raw``), measures the loader alone
   (``msta data bench``), then runs the MSTA d128 step fed by the loader (``--workers``, default all
   cores) and compares its sustained clips/s (all timed steps, not the median) with part 1's on
   random tensors (goal: at least 0.9x).

A smoke run on a CPU checks the wiring in a minute (tiny backbone, no goals worth reading):

    python bench/gpu_suite.py --device cpu --backbone clip-tiny --batch 2 --videos 2 --seconds 1 \\
        --no-compile --set adapter.dim=48 --set adapter.start=1 --set adapter.end=4 --classes 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
STEP_CONFIGS = "msta-256,msta-128,full-ft"
END_TO_END_GOAL = 0.9


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke run)")
    p.add_argument("--backbone", default="ViT-B-16", help="backbone of every step (random weights)")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: 32 on CUDA, 2 on CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--classes", type=int, default=400)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile part")
    p.add_argument("--videos", type=int, default=64, help="distinct synthetic videos for the end-to-end part")
    p.add_argument("--seconds", type=float, default=10.0, help="length of each synthetic video")
    p.add_argument("--codec", default="raw", help="msta data prepare --codec for the end-to-end part")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="loader workers (end to end)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override for every step"
    )
    p.add_argument("--out", default=None, help="also write every result to this JSON file")
    return p.parse_args(argv)


def train_step(args: argparse.Namespace, configs: str, *extra: str) -> dict:
    """Run ``bench/train_step.py`` (its table goes to our stdout) and return its results."""
    cmd = [sys.executable, str(BENCH / "train_step.py"), "--device", args.device, "--backbone", args.backbone,
           "--only", configs, "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--classes", str(args.classes), "--json", *extra]  # fmt: skip
    if args.batch:
        cmd += ["--batch", str(args.batch)]
    for o in args.overrides:
        cmd += ["--set", o]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"train_step.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])[args.backbone]


def _one_video(job: tuple[str, float, int]) -> None:
    sys.path.insert(0, str(BENCH))
    from dataload import make_video

    path, seconds, seed = job
    make_video(Path(path), seconds, 25, 320, 240, seed)


def make_prepared(args: argparse.Namespace, tmp: Path) -> tuple[Path, Path, dict]:
    """Synthetic videos, prepared; returns the list file, the prepared root and the figures."""
    from msta.prepare import prepare_list

    raw = tmp / "raw"
    raw.mkdir()
    t0 = time.perf_counter()
    jobs = [(str(raw / f"v{i}.mp4"), args.seconds, i) for i in range(args.videos)]
    with ProcessPoolExecutor(max_workers=min(args.workers, args.videos)) as pool:
        list(pool.map(_one_video, jobs))
    made = time.perf_counter() - t0
    # every video 16 times, two labels: epochs long enough that workers start only once per run
    lines = [f"v{i}.mp4 {i % 2}\n" for _ in range(16) for i in range(args.videos)]
    (raw / "list.txt").write_text("".join(lines))
    prepared = tmp / "prepared"
    res = prepare_list(raw / "list.txt", raw, prepared, workers=args.workers, codec=args.codec)
    if res.failed:
        raise SystemExit(f"preparing the synthetic videos failed: {res.failed}")
    figures = {
        "videos": args.videos,
        "codec": args.codec,
        "write_s": made,
        "prepare_s": res.seconds,
        "prepare_videos_per_s_per_core": args.videos / res.seconds / max(1, args.workers),
        "bytes_per_video": res.bytes_out / args.videos,
        "source_bytes_per_video": res.bytes_source / args.videos,
    }
    print(
        f"{args.videos} videos written in {made:.1f} s, prepared (--codec {args.codec}) in {res.seconds:.1f} s "
        f"with {args.workers} processes; {figures['bytes_per_video'] / 1e6:.1f} MB per video",
        flush=True,
    )
    return raw / "list.txt", prepared, figures


def loader_alone(args: argparse.Namespace, list_file: Path, prepared: Path, step: dict) -> dict:
    """The loader on its own, at the input size and batch of the step it feeds."""
    from msta.data import loader_throughput, read_video_list

    res = loader_throughput(
        read_video_list(list_file), prepared, workers=args.workers, clips=max(512, 16 * args.workers),
        input_size=step["input_size"], num_frames=8, batch_size=step["batch"],
    )  # fmt: skip
    print(
        f"loader alone: {res['clips_per_s']:.0f} clips/s with {args.workers} workers "
        f"({res['clips_per_s'] / max(1, args.workers):.1f} per worker)",
        flush=True,
    )
    return res


def sustained(row: dict) -> float:
    """Clips/s over all timed steps (stalls included), not the median step."""
    return row["batch"] * len(row["times"]) / sum(row["times"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    results: dict = {"args": vars(args)}

    def save() -> None:
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1))

    print("== 1. training step, random tensors, eager", flush=True)
    results["eager"] = train_step(args, STEP_CONFIGS)
    save()
    if not args.no_compile:
        print("\n== 2. training step, random tensors, torch.compile", flush=True)
        results["compiled"] = train_step(args, STEP_CONFIGS, "--compile")
        save()
    print("\n== 3. end to end: the MSTA d128 step fed by the data loader from prepared videos", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        list_file, prepared, results["prepared"] = make_prepared(args, Path(tmp))
        save()
        results["loader"] = loader_alone(args, list_file, prepared, results["eager"]["msta-128"])
        save()
        extra = ["--loader", str(list_file), "--root", str(prepared), "--workers", str(args.workers)]
        results["end_to_end"] = train_step(args, "msta-128", *extra)
        save()
    fed, ref = sustained(results["end_to_end"]["msta-128"]), sustained(results["eager"]["msta-128"])
    ratio = fed / ref
    results["end_to_end_ratio"] = ratio
    save()
    verdict = "met" if ratio >= END_TO_END_GOAL else "MISSED"
    print(
        f"\ngoal end to end (MSTA d128, loader on prepared data vs random tensors, sustained): {fed:.1f} vs "
        f"{ref:.1f} clips/s = {ratio:.2f}x (>= {END_TO_END_GOAL}: {verdict})"
    )


if __name__ == "__main__":
    main()
