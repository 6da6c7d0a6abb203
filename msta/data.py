"""Video data: list files, class lists, TSN frame sampling, decoding, transforms and the dataset.

* Video lists hold one video per line, ``<relative path> <label id>``.
* Frames are sampled TSN-style: the video is split into ``num_frames`` equal segments and one frame
  is taken from each (a random offset in training, the segment centre in evaluation).
* Decoding uses PyAV by default, decord on request, and folders of pre-extracted frames
  (``img_00001.jpg`` ...) whenever a list entry is a directory. Readers are opened inside
  ``__getitem__`` so DataLoader workers never share a decoder.
* Transforms follow the usual CLIP video recipe, sized from the backbone's image size ``S``:
  training resizes the short side to ``S*256/224``, takes a multi-scale crop resized to ``S``,
  optionally flips horizontally, and applies colour jitter (p=0.8) and greyscale (p=0.2);
  evaluation resizes the short side to ``S*256/224`` and takes the centre crop (or, for three
  spatial crops, resizes the short side to ``S`` and takes left/centre/right crops).
  All frames of a clip share the same random parameters.
* Every random choice of a sample derives from ``(seed, epoch, index)``, so a sample does not depend
  on the number of DataLoader workers or on where a run was resumed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
Stats = tuple[Sequence[float], Sequence[float]]  # (mean, std) per RGB channel, the backbone's
MULTI_SCALES = (1.0, 0.875, 0.75, 0.66)
DECODERS = ("pyav", "decord", "frames")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST_NAME = "manifest.json"


class DataError(Exception):
    """A data problem the user can fix (bad list file, unknown decoder, unreadable video...)."""


class VideoReadError(DataError):
    """One video cannot be opened or decoded."""


class ClassSpecError(DataError):
    """A class list cannot be loaded (wraps descgen's ClassListError)."""


# ------------------------------------------------------------------------------------ list files


@dataclass(frozen=True)
class ListEntry:
    line: int
    path: str
    label: int


def _parse_video_list(path: str | Path) -> tuple[list[ListEntry], list[tuple[int, str, str]]]:
    """Entries and malformed lines ``(line number, text, reason)`` of a video list file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"video list not found: {p}")
    if p.is_dir():
        raise DataError(f"video list {p} is a directory, not a file")
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DataError(f"cannot read video list {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"video list {p} is not UTF-8 text (byte {exc.start})") from None
    entries: list[ListEntry] = []
    bad: list[tuple[int, str, str]] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            bad.append((n, line, "expected '<relative path> <label id>'"))
            continue
        rel, raw_label = parts
        try:
            label = int(raw_label)
        except ValueError:
            bad.append((n, line, f"label id {raw_label!r} is not an integer"))
            continue
        if label < 0:
            bad.append((n, line, f"label id {label} is negative"))
            continue
        entries.append(ListEntry(n, rel, label))
    return entries, bad


def read_video_list(path: str | Path) -> list[tuple[str, int]]:
    """Read a ``relative/path.mp4 <label id>`` list. Blank lines are ignored.

    Raises :class:`DataError` naming the file and line of the first malformed line.
    """
    entries, bad = _parse_video_list(path)
    if bad:
        n, text, reason = bad[0]
        more = f" ({len(bad) - 1} more malformed lines)" if len(bad) > 1 else ""
        raise DataError(f"video list {path}, line {n}: {reason}, got {text!r}{more}")
    return [(e.path, e.label) for e in entries]


# ------------------------------------------------------------------------------------ class lists


def _manifest_for(spec: str | Path) -> dict | None:
    """The synthetic-dataset manifest next to a class file (or inside a dataset directory)."""
    p = Path(spec).expanduser()
    for cand in (p / MANIFEST_NAME, p.parent / MANIFEST_NAME):
        if cand.is_file():
            try:
                obj = json.loads(cand.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return obj if isinstance(obj, dict) else None
    return None


def _classes_file(spec: str, data_dir: str | Path | None) -> Path | None:
    p = Path(spec).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        manifest = _manifest_for(p)
        name = (manifest or {}).get("classes_file", "classes.csv")
        cand = p / name
        if cand.is_file():
            return cand
        raise ClassSpecError(f"{p} is a directory without a class list ({name})")
    return None


def load_classes(spec: str | Path, data_dir: str | Path | None = None) -> list[str]:
    """Class names in label order from a class-list file or a built-in dataset name.

    ``spec`` may be any file descgen reads (``id,name`` CSV, also with extra columns such as the
    split lists' ``id,global_id,name``; one name per line; ``classInd.txt``; ``labels.json``), a
    directory written by ``msta data synth``, or a dataset name (``k400``, ``ssv2``, ...) resolved
    in ``data_dir`` / ``$MSTA_DATA_DIR``.
    """
    from descgen.datasets import ClassListError, load_class_list

    spec = str(spec).strip()
    if not spec:
        raise ClassSpecError("no class list given")
    try:
        path = _classes_file(spec, data_dir)
        if path is not None:
            return list(load_class_list(classes_file=path, dataset=_safe_name(path)).names)
        if "," in spec:
            return _inline_classes(spec)
        return list(load_class_list(dataset=spec, data_dir=data_dir).names)
    except ClassListError as exc:
        raise ClassSpecError(str(exc)) from None


def _inline_classes(spec: str) -> list[str]:
    names = [n.strip() for n in spec.split(",")]
    if any(not n for n in names):
        raise ClassSpecError(f"empty class name in the list {spec!r}")
    seen: set[str] = set()
    for n in names:
        key = " ".join(n.split()).casefold()
        if key in seen:
            raise ClassSpecError(f"class {n!r} is listed twice in {spec!r}")
        seen.add(key)
    return names


def _safe_name(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", path.stem).lstrip("._-")
    return stem or "classes"


_DIRECTIONAL = re.compile(
    r"\b(left|right|clockwise|counterclockwise|anticlockwise|counter-clockwise)\b", re.I
)


def default_hflip(spec: str | Path | None, data_dir: str | Path | None = None) -> bool:
    """Whether horizontal flipping is a safe augmentation for a dataset / class-list spec.

    False for SSv2 (its classes name directions: flipping changes the label), for synthetic motion
    datasets (their manifest records it), and for any class list whose names mention left/right or
    a turning direction. True otherwise (Kinetics, UCF101, HMDB51...).
    """
    if spec is None:
        return True
    text = str(spec).strip()
    if not text:
        return True
    stem = Path(text).name.lower()
    if stem == "ssv2" or stem.startswith(("ssv2", "sthv2", "something")) or "ssv2" in text.lower():
        return False
    manifest = _manifest_for(text)
    if manifest is not None and "hflip" in manifest:
        return bool(manifest["hflip"])
    try:
        names = load_classes(text, data_dir)
    except DataError:
        return True
    return not any(_DIRECTIONAL.search(n) for n in names)


# ------------------------------------------------------------------------------------ sampling


def segment_indices(
    num_frames_total: int,
    num_segments: int,
    train: bool,
    rng: np.random.Generator | None = None,
    clip: int = 0,
    num_clips: int = 1,
) -> list[int]:
    """TSN sampling: one frame index per equal segment, in increasing order.

    Training takes a uniformly random position in each segment; evaluation takes the segment centre
    (with ``num_clips`` > 1, clip ``k`` takes the position ``(k + 0.5) / num_clips`` of each segment,
    so the clips are spread evenly). A video shorter than ``num_segments`` frames yields repeated
    indices, each frame used about equally often and in order.
    """
    n = int(num_frames_total)
    t = int(num_segments)
    if t <= 0:
        raise ValueError(f"num_segments must be positive, got {num_segments}")
    if n <= 0:
        raise DataError(f"a video needs at least one frame to sample from, got {n}")
    if not 0 <= clip < num_clips:
        raise ValueError(f"clip {clip} out of range for {num_clips} clips")
    seg = n / t
    if train:
        if rng is None:
            raise ValueError("training sampling needs a random generator")
        offsets = rng.random(t)
    else:
        offsets = np.full(t, (clip + 0.5) / num_clips)
    pos = (np.arange(t) + offsets) * seg
    idx = np.clip(np.floor(pos).astype(np.int64), 0, n - 1)
    return [int(i) for i in idx]


# ------------------------------------------------------------------------------------ decoders


def _natural_key(name: str) -> list[Any]:
    return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", name)]


class _Reader:
    path: Path
    num_frames: int

    def get(self, indices: Sequence[int]) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check(self, indices: Sequence[int]) -> list[int]:
        out = [int(i) for i in indices]
        if not out:
            raise ValueError("no frame indices given")
        for i in out:
            if not 0 <= i < self.num_frames:
                raise IndexError(f"frame {i} out of range for {self.path} ({self.num_frames} frames)")
        return out


class PyAVReader(_Reader):
    """PyAV decoder. Frames are decoded sequentially; a gap longer than ``seek_gap`` frames is
    crossed with a keyframe seek, so long videos are not decoded from the start."""

    def __init__(self, path: str | Path, threads: int = 1, seek_gap: int = 120) -> None:
        import av

        self.path = Path(path)
        self.seek_gap = seek_gap
        self._used = False  # whether the demuxer has moved (a new request must seek first)
        try:
            self._container = av.open(str(self.path))
        except Exception as exc:  # av raises many FFmpegError subclasses and OSError
            raise VideoReadError(f"cannot open {self.path}: {_short(exc)}") from None
        try:
            if not self._container.streams.video:
                raise VideoReadError(f"{self.path} has no video stream")
            self._stream = self._container.streams.video[0]
            if threads != 1:
                self._stream.thread_type = "AUTO"
                self._stream.thread_count = max(0, threads)
            rate = self._stream.average_rate or self._stream.guessed_rate or self._stream.base_rate
            self.fps = float(rate) if rate else 0.0
            tb = self._stream.time_base
            self._tb = float(tb) if tb else 0.0
            self._start = self._stream.start_time if self._stream.start_time is not None else 0
            self.num_frames = int(self._stream.frames or 0)
            if self.num_frames <= 0:
                self.num_frames = self._count_packets()
        except VideoReadError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise VideoReadError(f"cannot read {self.path}: {_short(exc)}") from None
        if self.num_frames <= 0:
            self.close()
            raise VideoReadError(f"{self.path} has no video frames")

    def _count_packets(self) -> int:
        count = 0
        for packet in self._container.demux(self._stream):
            if packet.size:
                count += 1
        self._used = True
        return count

    def _index_of(self, frame: Any, previous: int) -> int:
        if frame.pts is None or not self.fps or not self._tb:
            return previous + 1
        return int(round((frame.pts - self._start) * self._tb * self.fps))

    def _frames_from(self, target: int | None) -> Iterable[Any]:
        if target is not None and self.fps and self._tb:
            ts = self._start + int(target / self.fps / self._tb)
            self._container.seek(ts, stream=self._stream, backward=True, any_frame=False)
        elif target is not None:
            self._container.seek(0)
        return self._container.decode(self._stream)

    def get(self, indices: Sequence[int]) -> np.ndarray:
        wanted = sorted(set(self._check(indices)))
        found: dict[int, np.ndarray] = {}
        try:
            frames: Any = None
            pos = -1
            last: Any = None
            last_array: np.ndarray | None = None
            for target in wanted:
                if frames is None or target - pos > self.seek_gap:
                    seek = target > self.seek_gap or frames is not None or self._used
                    self._used = True
                    frames = iter(self._frames_from(target if seek else None))
                    pos, last, last_array = -1, None, None
                while last is None or pos < target:
                    frame = next(frames, None)
                    if frame is None:
                        break
                    pos = self._index_of(frame, pos)
                    last, last_array = frame, None
                if last is None:
                    raise VideoReadError(f"{self.path}: no frame decoded at or after index {target}")
                if last_array is None:
                    # copy: the array may share a buffer the decoder reuses for later frames
                    last_array = np.array(last.to_ndarray(format="rgb24"), copy=True)
                found[target] = last_array
        except VideoReadError:
            raise
        except Exception as exc:
            raise VideoReadError(f"cannot decode {self.path}: {_short(exc)}") from None
        return np.stack([found[int(i)] for i in indices])

    def close(self) -> None:
        container = getattr(self, "_container", None)
        if container is not None:
            self._container = None
            try:
                container.close()
            except Exception:  # pragma: no cover - closing a broken file
                pass


class DecordReader(_Reader):
    """decord decoder (optional dependency)."""

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        try:
            import decord
        except ImportError:
            raise DataError("decoder 'decord' is not installed: pip install decord==0.6.0") from None
        self.path = Path(path)
        try:
            self._vr = decord.VideoReader(str(self.path), ctx=decord.cpu(0), num_threads=max(0, threads))
            self.num_frames = len(self._vr)
        except Exception as exc:
            raise VideoReadError(f"cannot open {self.path}: {_short(exc)}") from None
        if self.num_frames <= 0:
            raise VideoReadError(f"{self.path} has no video frames")

    def get(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        wanted = sorted(set(idx))
        try:
            batch = self._vr.get_batch(wanted).asnumpy()
        except Exception as exc:
            raise VideoReadError(f"cannot decode {self.path}: {_short(exc)}") from None
        where = {v: k for k, v in enumerate(wanted)}
        return batch[[where[i] for i in idx]]

    def close(self) -> None:
        self._vr = None


class FramesReader(_Reader):
    """A folder of pre-extracted frames (``img_00001.jpg`` ...), in natural name order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise VideoReadError(f"frame folder not found: {self.path}")
        try:
            names = [n for n in os.listdir(self.path) if n.lower().endswith(IMAGE_SUFFIXES)]
        except OSError as exc:
            raise VideoReadError(f"cannot list {self.path}: {exc.strerror or exc}") from None
        self._files = [self.path / n for n in sorted(names, key=_natural_key)]
        self.num_frames = len(self._files)
        if not self._files:
            raise VideoReadError(f"frame folder {self.path} holds no images")

    def get(self, indices: Sequence[int]) -> np.ndarray:
        from PIL import Image

        idx = self._check(indices)
        cache: dict[int, np.ndarray] = {}
        for i in idx:
            if i not in cache:
                try:
                    with Image.open(self._files[i]) as im:
                        cache[i] = np.asarray(im.convert("RGB"))
                except Exception as exc:
                    raise VideoReadError(f"cannot read frame {self._files[i]}: {_short(exc)}") from None
        shapes = {a.shape for a in cache.values()}
        if len(shapes) > 1:
            raise VideoReadError(f"frames of {self.path} differ in size: {sorted(shapes)}")
        return np.stack([cache[i] for i in idx])


def decord_available() -> bool:
    try:
        import decord  # noqa: F401
    except ImportError:
        return False
    return True


def open_reader(path: str | Path, decoder: str = "pyav", threads: int = 1) -> _Reader:
    """Open a video for frame access: an object with ``num_frames`` and ``get(indices)`` returning a
    uint8 array ``[T, H, W, 3]`` (RGB), usable as a context manager.

    A directory is always read as a folder of frames. ``decoder`` picks the video decoder for files.
    """
    if decoder not in DECODERS:
        raise DataError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    p = Path(path)
    if p.is_dir():
        return FramesReader(p)
    if decoder == "frames":
        if not p.exists():
            raise VideoReadError(f"frame folder not found: {p}")
        raise VideoReadError(f"{p} is not a folder of frames")
    if not p.exists():
        raise VideoReadError(f"video not found: {p}")
    if decoder == "decord":
        return DecordReader(p, threads=threads)
    return PyAVReader(p, threads=threads)


def _short(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)  # FFmpeg and OS errors: the message without the path
    text = (strerror if isinstance(strerror, str) and strerror else str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# ------------------------------------------------------------------------------------ transforms


def scale_size(input_size: int) -> int:
    """Short-side size before cropping: ``input_size * 256 / 224``."""
    return int(round(input_size * 256 / 224))


@dataclass(frozen=True)
class Box:
    """A crop in source-pixel coordinates."""

    x: int
    y: int
    w: int
    h: int


def _to_source(x: float, y: float, w: float, h: float, f: float, src_w: int, src_h: int) -> Box:
    bw = max(1, min(src_w, int(round(w * f))))
    bh = max(1, min(src_h, int(round(h * f))))
    bx = min(max(0, int(round(x * f))), src_w - bw)
    by = min(max(0, int(round(y * f))), src_h - bh)
    return Box(bx, by, bw, bh)


def multiscale_crop_box(
    src_h: int,
    src_w: int,
    input_size: int,
    rng: np.random.Generator,
    scales: Sequence[float] = MULTI_SCALES,
    max_aspect_gap: int = 1,
) -> Box:
    """A random multi-scale crop (TSN style) for a frame of size ``src_h x src_w``.

    The frame is thought of as resized to short side ``input_size*256/224``; the crop's width and
    height are scales of that short side (at most ``max_aspect_gap`` steps apart in ``scales``) and
    it sits at one of five fixed positions (four corners, centre). The box is returned in source
    pixels, so the frame is resampled only once.
    """
    short = scale_size(input_size)
    f = min(src_h, src_w) / short  # source pixels per resized pixel
    rh, rw = src_h / f, src_w / f
    sizes = [int(short * s) for s in scales]
    pairs = [(w, h) for i, h in enumerate(sizes) for j, w in enumerate(sizes) if abs(i - j) <= max_aspect_gap]
    cw, ch = pairs[int(rng.integers(len(pairs)))]
    dx, dy = (rw - cw) / 4, (rh - ch) / 4
    positions = [(0, 0), (4 * dx, 0), (0, 4 * dy), (4 * dx, 4 * dy), (2 * dx, 2 * dy)]
    ox, oy = positions[int(rng.integers(len(positions)))]
    return _to_source(ox, oy, cw, ch, f, src_w, src_h)


def eval_crop_boxes(src_h: int, src_w: int, input_size: int, num_crops: int = 1) -> list[Box]:
    """Evaluation crops: one centre crop after resizing the short side to ``input_size*256/224``, or
    three crops (start / centre / end of the long side) after resizing the short side to
    ``input_size``."""
    if num_crops == 1:
        short = scale_size(input_size)
    elif num_crops == 3:
        short = input_size
    else:
        raise DataError(f"spatial crops must be 1 or 3, got {num_crops}")
    f = min(src_h, src_w) / short
    rh, rw = src_h / f, src_w / f
    s = input_size
    if num_crops == 1:
        return [_to_source((rw - s) / 2, (rh - s) / 2, s, s, f, src_w, src_h)]
    if rw >= rh:
        xs = [0.0, (rw - s) / 2, rw - s]
        return [_to_source(x, (rh - s) / 2, s, s, f, src_w, src_h) for x in xs]
    ys = [0.0, (rh - s) / 2, rh - s]
    return [_to_source((rw - s) / 2, y, s, s, f, src_w, src_h) for y in ys]


@dataclass(frozen=True)
class Jitter:
    """Colour jitter parameters shared by all frames of a clip."""

    brightness: float
    contrast: float
    saturation: float
    hue: float
    order: tuple[int, ...]


@dataclass(frozen=True)
class TrainParams:
    box: Box
    flip: bool
    jitter: Jitter | None
    grey: bool


def draw_train_params(
    src_h: int,
    src_w: int,
    input_size: int,
    rng: np.random.Generator,
    hflip: bool,
    jitter_p: float = 0.8,
    grey_p: float = 0.2,
    strength: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
) -> TrainParams:
    """Draw every random parameter of one training clip (always the same number of draws)."""
    box = multiscale_crop_box(src_h, src_w, input_size, rng)
    u = rng.random(3)
    b, c, s, h = strength
    factors = rng.random(4)
    order = tuple(int(i) for i in rng.permutation(4))
    jitter = Jitter(
        brightness=1 + b * (2 * factors[0] - 1),
        contrast=1 + c * (2 * factors[1] - 1),
        saturation=1 + s * (2 * factors[2] - 1),
        hue=h * (2 * factors[3] - 1),
        order=order,
    )
    return TrainParams(
        box=box,
        flip=bool(hflip and u[0] < 0.5),
        jitter=jitter if u[1] < jitter_p else None,
        grey=bool(u[2] < grey_p),
    )


def _crop_resize(frames: torch.Tensor, box: Box, size: int) -> torch.Tensor:
    import torchvision.transforms.v2.functional as TF

    crop = frames[:, :, box.y : box.y + box.h, box.x : box.x + box.w]
    if crop.shape[-2:] == (size, size):
        return crop.contiguous()
    return TF.resize(crop, [size, size], antialias=True)


def _normalize(x: torch.Tensor, stats: Stats | None = None) -> torch.Tensor:
    mean, std = stats or (CLIP_MEAN, CLIP_STD)
    mean = torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _as_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> uint8 ``[T, 3, H, W]``."""
    t = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.ndim != 4 or t.shape[-1] != 3:
        raise DataError(f"expected frames of shape [T, H, W, 3], got {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2)


def apply_train_transform(
    frames: np.ndarray | torch.Tensor, params: TrainParams, input_size: int, stats: Stats | None = None
) -> torch.Tensor:
    """uint8 ``[T, H, W, 3]`` -> normalised float ``[T, 3, S, S]`` with the given parameters."""
    import torchvision.transforms.v2.functional as TF

    x = _crop_resize(_as_tensor(frames), params.box, input_size)
    if params.flip:
        x = x.flip(-1)
    x = x.float().div_(255.0)
    if params.jitter is not None:
        j = params.jitter
        for op in j.order:
            if op == 0:
                x = TF.adjust_brightness(x, j.brightness)
            elif op == 1:
                x = TF.adjust_contrast(x, j.contrast)
            elif op == 2:
                x = TF.adjust_saturation(x, j.saturation)
            else:
                x = TF.adjust_hue(x, j.hue)
    if params.grey:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    return _normalize(x, stats).contiguous()


def train_transform(
    frames: np.ndarray | torch.Tensor,
    input_size: int,
    rng: np.random.Generator,
    hflip: bool,
    stats: Stats | None = None,
) -> torch.Tensor:
    """Training augmentation of one clip: uint8 ``[T, H, W, 3]`` -> float ``[T, 3, S, S]``."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    return apply_train_transform(frames, draw_train_params(h, w, input_size, rng, hflip), input_size, stats)


def eval_transform(
    frames: np.ndarray | torch.Tensor, input_size: int, num_crops: int = 1, stats: Stats | None = None
) -> torch.Tensor:
    """Evaluation views of one clip: ``[T, 3, S, S]`` for one crop, ``[3, T, 3, S, S]`` for three."""
    h, w = int(frames.shape[1]), int(frames.shape[2])
    x = _as_tensor(frames)
    views = [
        _normalize(_crop_resize(x, box, input_size).float().div_(255.0), stats)
        for box in eval_crop_boxes(h, w, input_size, num_crops)
    ]
    return views[0].contiguous() if num_crops == 1 else torch.stack(views).contiguous()


# ------------------------------------------------------------------------------------ dataset

_warned_lock = threading.Lock()
_warned: set[str] = set()


def _warn_once(path: str, message: str) -> None:
    with _warned_lock:
        if path in _warned:
            return
        _warned.add(path)
    log.warning("%s", message)


def sample_rng(seed: int, epoch: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The random generator of one sample; ``attempt`` > 0 for replacements of unreadable videos."""
    key = [int(seed) % 2**63, int(epoch) % 2**63, int(index) % 2**63]
    if attempt:
        key.append(int(attempt))
    return np.random.default_rng(key)


class VideoDataset(Dataset):
    """Videos from a list, sampled and transformed; ``dataset[i]`` returns a dict with

    * ``video``: float ``[T, 3, S, S]`` (or ``[V, T, 3, S, S]`` for multi-view evaluation, views
      ordered clip-major: clip 0 crops 0..C-1, clip 1 ...),
    * ``label``: int, the label of the video actually returned,
    * ``index``: int, the requested index,
    * ``source``: int, the index of the video actually returned (differs after a replacement),
    * ``skipped``: int, how many unreadable videos were replaced to produce this sample.

    The randomness of a sample is a function of ``(seed, epoch, index)`` only, so batches do not
    depend on the number of workers or on where a run resumed. Call :meth:`set_epoch` before
    creating each epoch's DataLoader iterator (the epoch lives in shared memory, so persistent
    workers follow it); indexing with ``(epoch, index)`` pairs is also accepted.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, int]],
        root: str | Path,
        num_frames: int,
        train: bool,
        input_size: int,
        hflip: bool,
        decoder: str = "pyav",
        seed: int = 0,
        views: tuple[int, int] = (1, 1),
        max_retries: int = 10,
        threads: int = 1,
        stats: Stats | None = None,
    ) -> None:
        if decoder not in DECODERS:
            raise DataError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
        if decoder == "decord" and not decord_available():
            raise DataError("decoder 'decord' is not installed: pip install decord==0.6.0")
        if num_frames <= 0 or input_size <= 0:
            raise DataError("num_frames and input_size must be positive")
        clips, crops = (int(views[0]), int(views[1]))
        if clips < 1 or crops not in (1, 3):
            raise DataError(
                f"views must be CLIPSxCROPS with CLIPS >= 1 and CROPS 1 or 3, got {clips}x{crops}"
            )
        if train and (clips, crops) != (1, 1):
            raise DataError("multi-view sampling is for evaluation only")
        if not items:
            raise DataError("the video list is empty")
        self.items = [(str(p), int(label)) for p, label in items]
        self.root = Path(root)
        self.num_frames = int(num_frames)
        self.train = bool(train)
        self.input_size = int(input_size)
        self.hflip = bool(hflip)
        self.decoder = decoder
        self.seed = int(seed)
        self.views = (clips, crops)
        self.max_retries = int(max_retries)
        self.threads = int(threads)
        self.stats = stats  # (mean, std) per channel; None: CLIP's
        # In shared memory, so that persistent DataLoader workers see set_epoch() calls too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.items)

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws the following samples use. Call it before creating
        the epoch's DataLoader iterator; workers (persistent ones included) read it from shared memory."""
        self._epoch.fill_(int(epoch))

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def path_of(self, index: int) -> Path:
        return self.root / self.items[index][0]

    def _load(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        clips, crops = self.views
        with open_reader(self.path_of(index), self.decoder, threads=self.threads) as reader:
            n = reader.num_frames
            if self.train:
                per_clip = [segment_indices(n, self.num_frames, True, rng)]
            else:
                per_clip = [
                    segment_indices(n, self.num_frames, False, clip=k, num_clips=clips) for k in range(clips)
                ]
            flat = [i for idx in per_clip for i in idx]
            frames = reader.get(flat)
        if self.train:
            return train_transform(frames, self.input_size, rng, self.hflip, self.stats)
        t = self.num_frames
        views: list[torch.Tensor] = []
        for k in range(clips):
            v = eval_transform(frames[k * t : (k + 1) * t], self.input_size, crops, self.stats)
            views.extend([v] if crops == 1 else list(v))
        return views[0] if len(views) == 1 else torch.stack(views)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        threads = torch.get_num_threads()
        if threads == 1 or get_worker_info() is not None:
            return self._get(key)
        # In the main process (num_workers=0) the clip's small tensor ops run much faster on one
        # thread than split across the training's intra-op threads, especially on a busy machine.
        torch.set_num_threads(1)
        try:
            return self._get(key)
        finally:
            torch.set_num_threads(threads)

    def _get(self, key: int | tuple[int, int]) -> dict[str, Any]:
        if isinstance(key, tuple):
            epoch, index = int(key[0]), int(key[1])
        else:
            epoch, index = self.epoch, int(key)
        if not 0 <= index < len(self.items):
            raise IndexError(f"index {index} out of range for {len(self.items)} videos")
        source = index
        last_error = ""
        for attempt in range(self.max_retries + 1):
            rng = sample_rng(self.seed, epoch, index, attempt)
            try:
                video = self._load(source, rng)
            except VideoReadError as exc:
                last_error = str(exc)
                _warn_once(str(self.path_of(source)), f"skipping unreadable video: {exc}")
                pick = sample_rng(self.seed, epoch, index, attempt + 1)
                nxt = int(pick.integers(len(self.items)))
                if nxt == source and len(self.items) > 1:
                    nxt = (nxt + 1 + int(pick.integers(len(self.items) - 1))) % len(self.items)
                source = nxt
                continue
            return {
                "video": video,
                "label": self.items[source][1],
                "index": index,
                "source": source,
                "skipped": attempt,
            }
        raise DataError(
            f"{self.max_retries + 1} videos in a row could not be read while loading sample {index} "
            f"(root {self.root}); last error: {last_error}. Run 'msta data check' on the list."
        )


# ------------------------------------------------------------------------------------ list check


@dataclass
class CheckReport:
    list_file: str
    root: str
    total: int = 0
    num_classes: int | None = None
    per_class: dict[int, int] = field(default_factory=dict)
    malformed: list[dict[str, Any]] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, Any]] = field(default_factory=list)
    out_of_range: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)
    empty_classes: list[int] = field(default_factory=list)
    checked_decoding: int = 0

    @property
    def problems(self) -> int:
        return len(self.malformed) + len(self.missing) + len(self.unreadable) + len(self.out_of_range)

    @property
    def ok(self) -> bool:
        return self.problems == 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_class"] = {str(k): v for k, v in sorted(self.per_class.items())}
        d["problems"] = self.problems
        d["ok"] = self.ok
        return d

    def summary(self) -> str:
        parts = [
            f"{self.total} videos",
            f"{len(self.per_class)} classes"
            + (f" of {self.num_classes}" if self.num_classes is not None else ""),
            f"{len(self.missing)} missing",
            f"{len(self.unreadable)} unreadable",
            f"{len(self.out_of_range)} labels out of range",
        ]
        if self.malformed:
            parts.append(f"{len(self.malformed)} malformed lines")
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} duplicate entries")
        return ", ".join(parts)


def _probe(path: Path, decoder: str, num_frames: int) -> str | None:
    """None when the video opens and its evaluation frames decode, else the error."""
    try:
        with open_reader(path, decoder) as reader:
            idx = segment_indices(reader.num_frames, num_frames, False) if num_frames > 0 else [0]
            frames = reader.get(idx)
            if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] == 0 or frames.shape[2] == 0:
                return f"decoded frames have shape {frames.shape}"
    except DataError as exc:
        return str(exc)
    except Exception as exc:  # anything a broken file makes a decoder raise
        return _short(exc)
    return None


def check_list(
    list_file: str | Path,
    root: str | Path,
    num_classes: int | None = None,
    decoder: str = "pyav",
    workers: int | None = None,
    num_frames: int = 8,
    progress: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Check a video list: counts per class, malformed lines, missing files, videos that do not
    decode (each is opened and its ``num_frames`` evaluation frames decoded; ``num_frames=1`` only
    decodes the first frame) and label ids outside ``0..num_classes-1``.

    Raises :class:`DataError` when the list file or the root cannot be used at all.
    """
    from concurrent.futures import ThreadPoolExecutor

    if decoder not in DECODERS:
        raise DataError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    if decoder == "decord" and not decord_available():
        raise DataError("decoder 'decord' is not installed: pip install decord==0.6.0")
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise DataError(f"video root is not a directory: {root_p}")
    entries, bad = _parse_video_list(list_file)
    report = CheckReport(list_file=str(list_file), root=str(root_p), num_classes=num_classes)
    report.total = len(entries)
    report.malformed = [{"line": n, "text": text, "error": reason} for n, text, reason in bad]
    counts = Counter(e.label for e in entries)
    report.per_class = dict(sorted(counts.items()))
    if num_classes is not None:
        report.out_of_range = [
            {"line": e.line, "path": e.path, "label": e.label} for e in entries if e.label >= num_classes
        ]
        report.empty_classes = [c for c in range(num_classes) if counts.get(c, 0) == 0]
    first: dict[str, int] = {}
    for e in entries:
        if e.path in first:
            report.duplicates.append({"line": e.line, "path": e.path, "first_line": first[e.path]})
        else:
            first[e.path] = e.line
    present: list[ListEntry] = []
    for e in entries:
        if (root_p / e.path).exists():
            present.append(e)
        else:
            report.missing.append({"line": e.line, "path": e.path})
    unique = list({e.path: e for e in present}.values())
    nworkers = workers if workers is not None else min(8, os.cpu_count() or 1)
    done = 0
    total = len(unique)
    if progress:
        progress(0, total)
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, nworkers)) as pool:
        futures = [(e, pool.submit(_probe, root_p / e.path, decoder, num_frames)) for e in unique]
        for e, fut in futures:
            err = fut.result()
            if err is not None:
                errors[e.path] = err
            done += 1
            if progress:
                progress(done, total)
    report.checked_decoding = total
    report.unreadable = [
        {"line": e.line, "path": e.path, "error": errors[e.path]} for e in present if e.path in errors
    ]
    return report


def format_views(views: tuple[int, int]) -> str:
    return f"{views[0]}x{views[1]}"


def parse_views(text: str) -> tuple[int, int]:
    """``"4x3"`` -> ``(4, 3)`` (clips x spatial crops)."""
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", str(text))
    if not m:
        raise DataError(f"views must look like CLIPSxCROPS (e.g. 1x1, 4x3), got {text!r}")
    clips, crops = int(m.group(1)), int(m.group(2))
    if clips < 1 or crops not in (1, 3):
        raise DataError(f"views must have CLIPS >= 1 and CROPS 1 or 3, got {text!r}")
    return clips, crops


__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CheckReport",
    "ClassSpecError",
    "DataError",
    "VideoDataset",
    "VideoReadError",
    "check_list",
    "default_hflip",
    "eval_transform",
    "load_classes",
    "open_reader",
    "parse_views",
    "read_video_list",
    "segment_indices",
    "train_transform",
]
