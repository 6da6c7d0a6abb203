"""Synthetic motion videos: classes that differ only in how a shape moves.

Every video shows one big shape (random kind, colour, size, orientation and position near the
centre) over a random background with per-frame noise (style ``plain``, the default: a near-white
shape on a flat dark background; ``textured``: any colours on a strongly textured background).
Moving shapes cross most of the frame. The class is the motion: moving from left to right, from
right to left, from top to bottom, from bottom to top and, optionally, turning clockwise /
counterclockwise and growing / shrinking. Each class is the time reversal of another
class, and the appearance distribution is the same for all classes, so a model that ignores frame
order (a single frame, or an average over frames) can at best tell the reversal pairs apart:
its accuracy ceiling is ``pairs / classes`` (0.5 for the default four directions), while frame order
separates every class.

Horizontal flipping turns "left to right" into "right to left", so these datasets must be trained
with ``hflip`` off; the manifest records this.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msta.errors import MstaError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Motion:
    key: str
    name: str
    reverse: str


# Class names use different words for different directions: with a random-weight text tower (tests,
# quickstart) names that differ only in word order ("from left to right" / "from right to left") get
# almost the same embedding (cosine 0.99), which leaves the classifier weak targets and makes training
# sit at chance for long, machine-dependent stretches.
MOTIONS: dict[str, Motion] = {
    m.key: m
    for m in (
        Motion("left_to_right", "Sliding rightward", "right_to_left"),
        Motion("right_to_left", "Sliding leftward", "left_to_right"),
        Motion("top_to_bottom", "Falling downward", "bottom_to_top"),
        Motion("bottom_to_top", "Rising upward", "top_to_bottom"),
        Motion("clockwise", "Turning a shape clockwise", "counterclockwise"),
        Motion("counterclockwise", "Turning a shape counterclockwise", "clockwise"),
        Motion("growing", "Making a shape bigger", "shrinking"),
        Motion("shrinking", "Making a shape smaller", "growing"),
    )
}

MOTION_SETS: dict[str, tuple[str, ...]] = {
    "horizontal": ("left_to_right", "right_to_left"),
    "directions": ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"),
    "all": tuple(MOTIONS),
}

SHAPES = ("triangle", "pacman", "half_disc", "bar")


class SynthError(MstaError, ValueError):
    """Bad synthetic-dataset parameters."""


def resolve_motions(spec: str | Sequence[str]) -> list[str]:
    """A motion-set name (``directions``, ``horizontal``, ``all``) or a comma-separated list of
    motion keys -> motion keys. Every motion's reverse must be included."""
    if isinstance(spec, str):
        text = spec.strip()
        keys = (
            list(MOTION_SETS[text])
            if text in MOTION_SETS
            else [k.strip() for k in text.split(",") if k.strip()]
        )
    else:
        keys = [str(k).strip() for k in spec]
    if not keys:
        raise SynthError("no motions given")
    unknown = [k for k in keys if k not in MOTIONS]
    if unknown:
        raise SynthError(
            f"unknown motion(s) {', '.join(unknown)}: choose from {', '.join(MOTIONS)} "
            f"or a set ({', '.join(MOTION_SETS)})"
        )
    if len(set(keys)) != len(keys):
        raise SynthError("motions are repeated")
    missing = sorted({MOTIONS[k].reverse for k in keys} - set(keys))
    if missing:
        raise SynthError(f"each motion needs its reverse in the set; add {', '.join(missing)}")
    return keys


# ------------------------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class ClipParams:
    shape: str
    colour: tuple[float, float, float]
    size: float  # half-size, fraction of the frame side
    cx: float  # centre of the motion, fractions of the frame
    cy: float
    travel: float  # translation length, fraction of the frame side
    angle: float  # initial orientation (radians)
    turn: float  # total rotation for turning motions (radians)
    background: np.ndarray  # [H, W, 3] float, static texture
    noise: float  # per-frame noise standard deviation (0..255 scale)


STYLES = ("plain", "textured")


def _texture(rng: np.random.Generator, size: int, amplitude: float) -> np.ndarray:
    """A smooth random texture: bilinear upsampling of a coarse 4x4 grid."""
    grid = rng.normal(0.0, amplitude, size=(4, 4, 3))
    pos = np.linspace(0, 3, size)
    i0 = np.clip(np.floor(pos).astype(int), 0, 2)
    frac = pos - i0
    rows = grid[i0] * (1 - frac)[:, None, None] + grid[i0 + 1] * frac[:, None, None]
    return rows[:, i0] * (1 - frac)[None, :, None] + rows[:, i0 + 1] * frac[None, :, None]


def draw_clip_params(rng: np.random.Generator, size: int, style: str = "plain") -> ClipParams:
    """Appearance of one clip; drawn the same way for every class.

    ``plain``: a near-white shape over a flat dark background (learnable from scratch in minutes).
    ``textured``: any colours over a strongly textured background, the shape contrasting with it.
    """
    if style == "plain":
        # Flat dark grey background, near-white shape: the only thing in the frame is where the
        # shape is, which even the features of a randomly initialised backbone encode.
        background = np.full((size, size, 3), float(rng.uniform(25, 45)))
        colour = rng.uniform(215, 255, size=3)
        noise = float(rng.uniform(1.5, 2.5))
    elif style == "textured":
        base = rng.uniform(30, 225, size=3)
        background = np.clip(base + _texture(rng, size, 28.0), 0, 255)
        while True:
            colour = rng.uniform(0, 255, size=3)
            if np.linalg.norm(colour - base) > 150:
                break
        noise = float(rng.uniform(3.0, 8.0))
    else:
        raise SynthError(f"unknown style {style!r}: choose one of {', '.join(STYLES)}")
    return ClipParams(
        shape=SHAPES[int(rng.integers(len(SHAPES)))],
        colour=(float(colour[0]), float(colour[1]), float(colour[2])),
        # A big shape that crosses most of the frame (entering and leaving at the edges): the
        # per-patch features of a small, randomly initialised backbone see it arrive and leave.
        size=float(rng.uniform(0.22, 0.26)),
        cx=float(0.5 + rng.uniform(-0.05, 0.05)),
        cy=float(0.5 + rng.uniform(-0.05, 0.05)),
        travel=float(rng.uniform(0.7, 0.8)),
        angle=float(rng.uniform(0, 2 * math.pi)),
        turn=float(rng.uniform(0.6, 0.8) * math.pi),
        background=background,
        noise=noise,
    )


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of shape-local coordinates (unit half-size, pointing along +u)."""
    if shape == "triangle":
        # Isosceles triangle with its apex at (1, 0) and base at u = -0.7.
        return (u >= -0.7) & (np.abs(v) <= (1.0 - u) * 0.5)
    if shape == "pacman":
        r2 = u * u + v * v
        mouth = (u > 0) & (np.abs(v) < u * 0.75)
        return (r2 <= 1.0) & ~mouth
    if shape == "half_disc":
        return (u * u + v * v <= 1.0) & (u >= -0.15)
    if shape == "bar":
        return (np.abs(u) <= 1.0) & (np.abs(v) <= 0.4)
    raise ValueError(shape)


def render_frame(params: ClipParams, x: float, y: float, angle: float, scale: float, size: int) -> np.ndarray:
    """The shape at centre ``(x, y)`` (fractions), orientation ``angle`` and ``scale`` x its size,
    anti-aliased by 3x3 supersampling, over the clip's background (no noise)."""
    ss = 3
    coords = (np.arange(size * ss) + 0.5) / (size * ss)
    gx, gy = np.meshgrid(coords, coords)
    half = max(params.size * scale, 1e-3)
    dx, dy = (gx - x) / half, (gy - y) / half
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    mask = _inside(params.shape, u, v).astype(np.float32)
    cover = mask.reshape(size, ss, size, ss).mean(axis=(1, 3))[..., None]
    colour = np.asarray(params.colour, dtype=np.float32)
    return params.background * (1 - cover) + colour * cover


def render_clip(
    motion: str, params: ClipParams, num_frames: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """uint8 ``[num_frames, size, size, 3]`` showing ``motion``."""
    if motion not in MOTIONS:
        raise SynthError(f"unknown motion {motion!r}")
    frames = []
    for t in range(num_frames):
        a = t / (num_frames - 1) if num_frames > 1 else 0.5
        x, y, angle, scale = params.cx, params.cy, params.angle, 1.0
        half_travel = params.travel / 2
        if motion == "left_to_right":
            x = params.cx - half_travel + params.travel * a
        elif motion == "right_to_left":
            x = params.cx + half_travel - params.travel * a
        elif motion == "top_to_bottom":
            y = params.cy - half_travel + params.travel * a
        elif motion == "bottom_to_top":
            y = params.cy + half_travel - params.travel * a
        elif motion == "clockwise":  # image y points down: increasing angle turns clockwise on screen
            angle = params.angle + params.turn * a
        elif motion == "counterclockwise":
            angle = params.angle - params.turn * a
        elif motion == "growing":
            scale = 0.55 + 0.9 * a
        elif motion == "shrinking":
            scale = 1.45 - 0.9 * a
        img = render_frame(params, x, y, angle, scale, size)
        img = img + rng.normal(0.0, params.noise, size=img.shape)
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return np.stack(frames)


# ------------------------------------------------------------------------------------ encoding


def _pick_codec(preferred: str | None = None) -> str:
    import av

    for name in [preferred] if preferred else ["libx264", "mpeg4"]:
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:
            continue
    raise SynthError(f"no usable video encoder ({preferred or 'libx264, mpeg4'}) in this PyAV build")


def write_video(path: str | Path, frames: np.ndarray, fps: int = 16, codec: str | None = None) -> str:
    """Encode uint8 RGB frames ``[T, H, W, 3]`` to an mp4 file (yuv420p). Returns the codec used."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise SynthError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        raise SynthError(f"frame size must be even for yuv420p, got {w}x{h}")
    name = _pick_codec(codec)
    # bitexact: no creation time or library version in the header, so output is reproducible
    with av.open(str(path), "w", format="mp4", options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream(name, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.codec_context.thread_count = 1  # deterministic output
        if name == "libx264":
            stream.options = {"crf": "17", "preset": "veryfast", "g": str(max(1, 2 * fps)), "threads": "1"}
        else:
            stream.bit_rate = max(200_000, w * h * fps * 2)
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return name


# ------------------------------------------------------------------------------------ dataset


@dataclass
class SynthResult:
    out_dir: Path
    classes: list[str]
    train: int
    val: int
    manifest: dict


@dataclass(frozen=True)
class _Options:
    """The checked options of one synthetic dataset."""

    keys: list[str]
    videos_per_class: int
    val_per_class: int
    frames: int
    size: int
    seed: int
    fps: int
    style: str


def synth_dataset(
    out_dir: str | Path,
    videos_per_class: int = 40,
    val_per_class: int = 16,
    frames: int = 16,
    size: int = 64,
    seed: int = 0,
    motions: str | Sequence[str] = "directions",
    fps: int = 16,
    codec: str | None = None,
    style: str = "plain",
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write a synthetic motion dataset to ``out_dir``:

    ``videos/{train,val}/<motion>_<k>.mp4``, ``train.txt`` and ``val.txt`` (paths relative to
    ``out_dir``, the video root), ``classes.csv`` (``id,name``), ``manifest.json`` and ``README.md``.
    The rendered frames, lists and class list are a function of the arguments (the encoder may
    still vary a few pixel values between runs). The directory is written next to ``out_dir`` and
    renamed into place at the end, so a failure leaves nothing half-written.
    """
    opts = _Options(resolve_motions(motions), videos_per_class, val_per_class, frames, size, seed, fps, style)
    _check_options(opts)
    out = Path(out_dir).expanduser()
    try:
        _check_target(out, overwrite)
        codec_name = _pick_codec(codec)
        manifest = _write_dataset(out, opts, codec_name, progress)
    except OSError as exc:  # a directory that cannot be written, a full disk...
        raise SynthError(str(exc)) from None
    names = manifest["classes"]
    return SynthResult(out, names, manifest["counts"]["train"], manifest["counts"]["val"], manifest)


def _check_options(opts: _Options) -> None:
    if opts.videos_per_class < 1 or opts.val_per_class < 0:
        raise SynthError("videos-per-class must be >= 1 and val-per-class >= 0")
    if opts.frames < 2:
        raise SynthError("frames must be at least 2")
    if opts.size < 16 or opts.size % 2:
        raise SynthError("size must be an even number >= 16")
    if opts.fps < 1:
        raise SynthError("fps must be positive")
    if opts.style not in STYLES:
        raise SynthError(f"unknown style {opts.style!r}: choose one of {', '.join(STYLES)}")


def _check_target(out: Path, overwrite: bool) -> None:
    """Refuse to write into anything but a new or empty directory, or (with ``overwrite``) a
    synthetic dataset written before."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SynthError(f"{out} exists and is not a directory")
    if any(out.iterdir()):
        if not overwrite:
            raise SynthError(f"{out} is not empty (use --force to replace a synthetic dataset)")
        if not (out / MANIFEST_NAME).is_file():
            raise SynthError(f"{out} is not empty and holds no {MANIFEST_NAME}: not replacing it")


def _write_dataset(
    out: Path, opts: _Options, codec_name: str, progress: Callable[[int, int], None] | None
) -> dict:
    """Write everything into a temporary sibling of ``out``, then rename it into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        lists = _write_videos(tmp, opts, codec_name, progress)
        manifest = _manifest(opts, codec_name, {split: len(lines) for split, lines in lists.items()})
        _write_metadata(tmp, lists, manifest)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _write_videos(
    root: Path, opts: _Options, codec_name: str, progress: Callable[[int, int], None] | None
) -> dict[str, list[str]]:
    """Render and encode every video; the list lines ``<path> <label>`` of each split."""
    lists: dict[str, list[str]] = {"train": [], "val": []}
    jobs = [
        (split, label, key, k)
        for split, count in (("train", opts.videos_per_class), ("val", opts.val_per_class))
        for label, key in enumerate(opts.keys)
        for k in range(count)
    ]
    total = len(jobs)
    if progress:
        progress(0, total)
    seed = opts.seed % 2**63
    for done, (split, label, key, k) in enumerate(jobs, start=1):
        split_id = 0 if split == "train" else 1
        # The appearance stream ignores the class: video k of every class shows the same shape
        # over the same background, and only the motion (and the pixel noise) differs.
        params = draw_clip_params(np.random.default_rng([seed, split_id, k]), opts.size, opts.style)
        noise_rng = np.random.default_rng([seed, split_id, k, label + 1])
        clip = render_clip(key, params, opts.frames, opts.size, noise_rng)
        rel = f"videos/{split}/{key}_{k:03d}.mp4"
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_video(dest, clip, fps=opts.fps, codec=codec_name)
        lists[split].append(f"{rel} {label}")
        if progress:
            progress(done, total)
    return lists


def _manifest(opts: _Options, codec_name: str, counts: dict[str, int]) -> dict:
    keys = opts.keys
    pairs = sorted({tuple(sorted((k, MOTIONS[k].reverse))) for k in keys})
    return {
        "name": "synthetic-motion",
        "format_version": FORMAT_VERSION,
        "classes_file": "classes.csv",
        "train_list": "train.txt",
        "val_list": "val.txt",
        "root": ".",
        "classes": [MOTIONS[k].name for k in keys],
        "motions": keys,
        "reverse_pairs": [list(p) for p in pairs],
        "frame_order_free_accuracy_ceiling": len(pairs) / len(keys),
        "chance_accuracy": 1 / len(keys),
        "hflip": False,
        "videos_per_class": {"train": opts.videos_per_class, "val": opts.val_per_class},
        "counts": {"train": counts["train"], "val": counts["val"]},
        "frames": opts.frames,
        "size": opts.size,
        "fps": opts.fps,
        "codec": codec_name,
        "pix_fmt": "yuv420p",
        "style": opts.style,
        "seed": opts.seed,
    }


def _write_metadata(root: Path, lists: dict[str, list[str]], manifest: dict) -> None:
    """The video lists, the class list, the manifest and the README."""
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    names = manifest["classes"]
    (root / "classes.csv").write_text(
        "id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(names)), encoding="utf-8"
    )
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (root / "README.md").write_text(_readme(manifest), encoding="utf-8")


def _readme(m: dict) -> str:
    classes = "\n".join(f"{i}. {n}" for i, n in enumerate(m["classes"]))
    return f"""# Synthetic motion dataset

{m["counts"]["train"]} training and {m["counts"]["val"]} validation videos ({m["frames"]} frames,
{m["size"]}x{m["size"]} px, {m["fps"]} fps, {m["codec"]} {m["pix_fmt"]} mp4), seed {m["seed"]}.

Every video shows one shape of random kind, colour, size and orientation over a random
background (style `{m["style"]}`). The classes differ only in the motion of the shape:

{classes}

Each class is the time reversal of another ({", ".join("/".join(p) for p in m["reverse_pairs"])}),
so a model that ignores frame order can reach at most
{m["frame_order_free_accuracy_ceiling"]:.2f} accuracy (chance: {m["chance_accuracy"]:.2f}).

Horizontal flipping changes the label of left/right (and turning) classes: train with `hflip` off.

Files: `train.txt`, `val.txt` (`<path relative to this directory> <label id>`), `classes.csv`
(`id,name`), `manifest.json` (all parameters), `videos/`.
"""
