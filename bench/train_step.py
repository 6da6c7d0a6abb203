"""One MSTA training step against full fine-tuning and frozen inference, side by side.

Each configuration of each backbone (default: CLIP ViT-B/16, then ViCLIP-B/16, whose joint
space-time attention runs over 1 + 196*8 tokens per clip) runs in a fresh subprocess (so its peak
memory is its own):

* ``msta-256``: MSTA, bottleneck 256, adapters in blocks 1-12 (8,712,192 trainable with ViT-B/16
  or ViCLIP-B/16);
* ``msta-128``: MSTA, bottleneck 128, adapters in blocks 8-12 (1,744,000 trainable);
* ``full-ft``: every backbone weight trainable, no adapters (ViFi-CLIP style fine-tuning);
* ``frozen``: inference only (no gradients), class features computed once.

A training step is: class-prompt embeddings for all classes (text branch), video forward,
cross-entropy + L_CC over the classes (pre-encoded descriptions, 2 spatial + 2 temporal per
class), backward, AdamW step. The median of ``--steps`` timed steps after ``--warmup`` is
reported with the peak memory (CPU: the process's peak resident set, and its growth over the
built model; CUDA: ``torch.cuda.max_memory_allocated``) and the ratios to full fine-tuning.

``text``: the text branch alone (all classes, forward + backward through the text adapters of
``msta-128``), with the context cut to the longest end-of-text token against the full context.

On CUDA the step runs under bf16 autocast (default batch 32; ``--set run.precision=fp32`` for fp32, through
:func:`msta.run.autocast` as in training) and clips per second are printed.
Every row also shows the FLOPs of one step, counted by ``torch.utils.flop_counter`` on an extra
untimed step (2 x multiply-adds of every matrix product, convolution and attention, forward and
backward, as executed), the achieved TFLOP/s, and the model FLOP utilisation against the device's
dense bf16 peak (``--peak-tflops``; known for H100/H200 and A100, otherwise not printed).
``--compile`` runs the model under ``torch.compile``.
``--loader LIST --root DIR`` feeds the steps from the real video data loader instead of random
tensors (end-to-end figure).

    python bench/train_step.py                      # CPU, batch 2, all configurations
    python bench/train_step.py --only msta-128,full-ft --steps 2
    python bench/train_step.py --backbone viclip-b16 --only msta-128,msta-256,full-ft
    python bench/train_step.py --device cuda        # bf16, batch 32
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

CONFIGS = ("msta-256", "msta-128", "full-ft", "frozen", "text")
ADAPTERS = {
    "msta-256": ["adapter.dim=256", "adapter.start=1", "adapter.end=12"],
    "msta-128": ["adapter.dim=128", "adapter.start=8", "adapter.end=12"],
    "full-ft": ["adapter.branches=none"],
    "frozen": ["adapter.branches=none"],
    "text": ["adapter.dim=128", "adapter.start=8", "adapter.end=12"],
}
DESCRIPTIONS_PER_KIND = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: 2 on CPU, 32 on CUDA)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    p.add_argument("--only", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    p.add_argument(
        "--backbone",
        default="ViT-B-16,viclip-b16",
        help="comma-separated backbones (random weights): open_clip names, model-config JSONs, viclip-b16, ...",
    )
    p.add_argument("--frames", type=int, default=8)
    p.add_argument(
        "--classes", type=int, default=400, help="number of classes (Kinetics-400 names when found)"
    )
    p.add_argument(
        "--text-steps", type=int, default=1, help="timed repetitions of the text-branch comparison"
    )
    p.add_argument("--loader", default=None, help="video list: feed steps from the real data loader")
    p.add_argument("--root", default=".", help="video root for --loader")
    p.add_argument("--workers", type=int, default=2, help="data loader workers for --loader")
    p.add_argument("--decoder", default="pyav", help="video decoder for --loader")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], help="config override for every run"
    )
    p.add_argument("--json", action="store_true", help="also print all results as one JSON object")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="device peak TFLOP/s for utilisation (default: known GPUs)",
    )
    p.add_argument("--compile", action="store_true", help="run the model under torch.compile")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --------------------------------------------------------------------------- worker side


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def class_names(n: int) -> list[str]:
    """Kinetics-400 class names from the data directory when available, else synthetic ones of
    similar length."""
    try:
        from descgen.datasets import load_class_list

        names = load_class_list("k400", data_dir=os.environ.get("MSTA_DATA_DIR")).names
    except Exception:  # noqa: BLE001 - the benchmark also runs without a data directory
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "labels" / "k400.csv"
        names = []
        if shared.is_file():
            names = [
                line.split(",", 1)[1].strip() for line in shared.read_text().splitlines()[1:] if "," in line
            ]
    if len(names) < n:
        words = ["playing", "riding", "throwing", "a", "ball", "guitar", "horse", "snow", "dancing", "cake"]
        names += [" ".join(words[(i + k) % len(words)] for k in range(2 + i % 4)) + f" {i}" for i in range(n)]
    return names[:n]


def synthetic_batches(args, model, device) -> Iterator[tuple]:
    import torch

    g = torch.Generator().manual_seed(0)
    size = model.image_size
    video = torch.randn(args.batch, args.frames, 3, size, size, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    while True:
        yield video, labels


def loader_batches(args, model, device) -> Iterator[tuple]:
    """Batches from the real video data loader (``--loader LIST --root DIR``)."""
    from torch.utils.data import DataLoader

    from msta.data import VideoDataset, read_video_list
    from msta.transforms import batch_video

    items = read_video_list(args.loader)
    labels_seen = max(label for _, label in items) + 1
    if labels_seen > args.classes:
        raise SystemExit(f"--loader labels go up to {labels_seen - 1}; pass --classes {labels_seen} or more")
    dataset = VideoDataset(
        items,
        args.root,
        num_frames=args.frames,
        train=True,
        input_size=model.image_size,
        hflip=True,
        decoder=args.decoder,
        stats=model.input_stats,
        defer_colour=True,  # uint8 clips from the workers; colour and normalisation on the GPU
    )
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        shuffle=True,
        num_workers=args.workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,  # workers start once, not at every pass over the list
    )
    while True:
        for batch in loader:
            yield batch_video(batch, device), batch["label"].to(device, non_blocking=True)


def build(kind: str, args, device):
    import torch

    from msta.config import load_config
    from msta.model import build_model

    overrides = [f"model.backbone={args.backbone}", "model.pretrained=none", f"model.frames={args.frames}"]
    cfg = load_config([], overrides + ADAPTERS[kind] + list(args.overrides))
    torch.manual_seed(0)
    model = build_model(cfg)
    if kind == "full-ft":
        model.set_backbone_trainable(True)
    model = model.to(device)
    if args.compile:
        model.forward = torch.compile(model.forward)
    return model, cfg


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_worker(kind: str, args) -> dict:
    import torch

    from msta.loss import msta_loss
    from msta.run import autocast as run_autocast

    device = _device(args.device)
    torch.manual_seed(0)
    model, cfg = build(kind, args, device)
    names = class_names(args.classes)
    autocast = run_autocast(device, cfg.run.precision)  # bf16 on CUDA unless --set run.precision=fp32
    d = model.backbone.embed_dim
    g = torch.Generator().manual_seed(1)
    ds = torch.randn(args.classes, DESCRIPTIONS_PER_KIND, d, generator=g).to(device)
    dt = torch.randn(args.classes, DESCRIPTIONS_PER_KIND, d, generator=g).to(device)
    if kind == "text":
        return run_text(model, names, args, device, autocast)
    batches = (loader_batches if args.loader else synthetic_batches)(args, model, device)
    trainable, total = model.num_parameters()

    params = [p for p in model.parameters() if p.requires_grad]
    opt = (
        torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.98), eps=1e-8, weight_decay=1e-3) if params else None
    )
    frozen_w = None
    if kind == "frozen":
        model.eval()
        with torch.inference_mode(), autocast:
            frozen_w = model.encode_class_prompts(names)
    else:
        model.train()

    def step() -> None:
        video, labels = next(batches)
        if kind == "frozen":
            with torch.inference_mode(), autocast:
                model(video, frozen_w).argmax(dim=-1)
            return
        opt.zero_grad(set_to_none=True)
        with autocast:
            w = model.encode_class_prompts(names)
            logits = model(video, w)
            loss, _ = msta_loss(logits, labels, w, ds, dt, consistency_weight=1.0)
        loss.backward()
        opt.step()

    out = {"config": kind, "device": str(device), "batch": args.batch, "trainable": trainable, "total": total,
           "input_size": model.image_size, "precision": cfg.run.precision}  # fmt: skip
    out.update(measure(step, args, device))
    return out


def measure(step, args, device) -> dict:
    """Median step time after warm-up, the peak memory and its growth, FLOPs and TFLOP/s of ``step``."""
    import torch

    _sync(device)
    base_rss = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device) / 2**20
    for _ in range(args.warmup):
        step()
    _sync(device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    out = {"step_s": statistics.median(times), "times": times}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        out.update(peak_mb=peak, step_mb=peak - base_cuda, gpu=torch.cuda.get_device_name(device))
    else:
        peak = _rss_mb()
        out.update(peak_mb=peak, step_mb=peak - base_rss)
    out["flops"] = step_flops(step)  # after the memory figures: the counter's extra step is not in them
    out["tflops_per_s"] = out["flops"] / out["step_s"] / 1e12
    out["clips_per_s"] = args.batch / out["step_s"]
    return out


def step_flops(step) -> float:
    """FLOPs of one call of ``step`` as executed (forward and backward), by torch's FLOP counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return float(counter.get_total_flops())


PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


def peak_tflops(args, results: dict) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    names = {r.get("gpu", "") for r in results.values()}
    for key, value in PEAK_BF16_TFLOPS.items():
        if any(key in n for n in names):
            return value
    return None


def run_text(model, names, args, device, autocast) -> dict:
    """Text branch for all classes (forward + backward into the text adapters): cut vs full context
    (both without the frozen-prefix cache), then cut with the cache (what a training step does)."""
    tokens = model.tokenize_classes(names).to(device)
    cut_len = model.backbone.text_cut_length(tokens)
    result = {"config": "text", "device": str(device), "classes": len(names), "cut_tokens": cut_len}
    params = [p for p in model.parameters() if p.requires_grad]
    for label, cut, cached in (("cut", True, False), ("full", False, False), ("cut_cached", True, True)):
        model.cache_text_prefix = cached
        times = []
        for i in range(args.warmup + args.text_steps):
            for p in params:
                p.grad = None
            _sync(device)
            t0 = time.perf_counter()
            with autocast:
                w = model.encode_text(tokens, cut=cut)
            w.float().square().sum().backward()
            _sync(device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        result[f"{label}_s"] = statistics.median(times)
    result["full_tokens"] = int(tokens.shape[1])
    result["speedup"] = result["full_s"] / result["cut_s"]
    return result


# --------------------------------------------------------------------------- driver side


def run_config(kind: str, args, backbone: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--backbone", backbone]
    for key in ("device", "frames", "classes", "steps", "warmup", "text_steps", "batch"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    if args.compile:
        cmd.append("--compile")
    for o in args.overrides:
        cmd += ["--set", o]
    if args.loader:
        cmd += ["--loader", args.loader, "--root", args.root, "--workers", str(args.workers)]
        cmd += ["--decoder", args.decoder]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"configuration {backbone} {kind} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_table(backbone: str, results: dict, wanted: list[str], peak: float | None) -> None:
    """Step time, FLOPs and memory of each configuration of one backbone, with ratios to full
    fine-tuning and the goals."""
    ref = results.get("full-ft")
    rows = [k for k in wanted if k != "text"]
    precision = next((r["precision"] for r in results.values() if "precision" in r), "-")
    if rows:
        print(
            f"\n{backbone} (run.precision {precision}: bf16 autocast on CUDA, else fp32)\n"
            f"{'configuration':<10} {'trainable':>12} {'step s':>8} {'clips/s':>8} {'GFLOP':>8} "
            f"{'TFLOP/s':>8} {'MFU':>6} {'peak MB':>9} {'step MB':>8} {'time/FT':>8} {'peak/FT':>8}"
        )
        for k in rows:
            r = results[k]
            mfu = f"{100 * r['tflops_per_s'] / peak:.1f}%" if peak else "-"
            ratios = ("", "")
            if ref:
                ratios = (f"{r['step_s'] / ref['step_s']:.2f}x", f"{r['peak_mb'] / ref['peak_mb']:.2f}x")
            print(
                f"{k:<10} {r['trainable']:>12,} {r['step_s']:>8.3f} {r['clips_per_s']:>8.2f} "
                f"{r['flops'] / 1e9:>8.1f} {r['tflops_per_s']:>8.2f} {mfu:>6} {r['peak_mb']:>9.0f} "
                f"{r['step_mb']:>8.0f} {ratios[0]:>8} {ratios[1]:>8}"
            )
    print_goals(results, peak)


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def print_goals(results: dict, peak: float | None) -> None:
    ref = results.get("full-ft")
    if ref and "msta-256" in results:
        t = results["msta-256"]["step_s"] / ref["step_s"]
        print(
            f"goal MSTA(256, 1-12) step time vs full fine-tuning: {t:.2f}x (<= 0.75: {_verdict(t <= 0.75)})"
        )
    if ref and "msta-128" in results:
        r = results["msta-128"]
        t, m = r["step_s"] / ref["step_s"], r["peak_mb"] / ref["peak_mb"]
        speed = r["clips_per_s"] / ref["clips_per_s"]
        print(
            f"goal MSTA(128, 8-12) vs full fine-tuning: clips/s {speed:.2f}x (>= 2: {_verdict(speed >= 2)}), "
            f"step time {t:.2f}x, peak memory {m:.2f}x (<= 0.6: {_verdict(m <= 0.6)})"
        )
        if peak:
            mfu = r["tflops_per_s"] / peak
            print(
                f"goal MSTA(128, 8-12) model FLOP utilisation: {100 * mfu:.1f}% (>= 35%: {_verdict(mfu >= 0.35)})"
            )
    if "text" in results:
        r = results["text"]
        print(
            f"text branch, {r['classes']} classes, forward+backward: cut to {r['cut_tokens']} tokens "
            f"{r['cut_s']:.2f}s, full {r['full_tokens']} tokens {r['full_s']:.2f}s -> {r['speedup']:.1f}x "
            f"(>= 3: {_verdict(r['speedup'] >= 3)}); cut + cached frozen blocks "
            f"{r['cut_cached_s']:.2f}s ({r['full_s'] / r['cut_cached_s']:.1f}x)"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = _device(args.device)
    if args.batch is None:
        args.batch = 32 if device.type == "cuda" else 2
    if args.worker:
        print(json.dumps(run_worker(args.worker, args)))
        return
    wanted = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = sorted(set(wanted) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown configuration(s): {', '.join(unknown)} (choose from {', '.join(CONFIGS)})")
    backbones = [b.strip() for b in args.backbone.split(",") if b.strip()]
    source = f"data loader {args.loader}" if args.loader else "random tensors"
    print(
        f"{', '.join(backbones)} (random weights), {args.frames} frames, batch {args.batch}, "
        f"{args.classes} classes, device {device}, "
        f"inputs from {source}, median of {args.steps} steps after {args.warmup} warm-up",
        flush=True,
    )
    results: dict[str, dict] = {}
    for backbone in backbones:
        results[backbone] = {}
        for kind in wanted:
            t0 = time.perf_counter()
            results[backbone][kind] = run_config(kind, args, backbone)
            print(f"  ran {backbone} {kind} in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
        print_table(backbone, results[backbone], wanted, peak_tflops(args, results[backbone]))
    if args.json:
        print(json.dumps(results))


if __name__ == "__main__":
    main()
