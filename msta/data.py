"""Video lists, class lists, TSN frame sampling and the video dataset.

* Video lists hold one video per line, ``<relative path> <label id>``.
* Frames are sampled TSN-style: the video is split into ``num_frames`` equal segments and one frame
  is taken from each (a random offset in training, the segment centre in evaluation).
* Videos are read by :mod:`msta.video` and transformed by :mod:`msta.transforms`. A root holding a
  prepared-data manifest (``msta data prepare``) is read from its frame banks, with the same lists:
  every decoded frame is stored, so the sampled indices (and frames) are the ones of the raw videos.
* Every random choice of a sample derives from ``(seed, epoch, index)``, so a sample does not depend
  on the number of DataLoader workers or on where a run was resumed.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from msta.transforms import Stats, eval_views, finish, train_views
from msta.video import DataError, VideoReadError, check_decoder, open_reader, prepared_codec, video_path
from msta.views import parse_views

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"


class ClassSpecError(DataError):
    """A class list cannot be loaded (wraps descgen's ClassListError)."""


# ------------------------------------------------------------------------------------ list files


@dataclass(frozen=True)
class ListEntry:
    line: int
    path: str
    label: int


def parse_video_list(path: str | Path) -> tuple[list[ListEntry], list[tuple[int, str, str]]]:
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
    entries, bad = parse_video_list(path)
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
      ordered clip-major: clip 0 crops 0..C-1, clip 1 ...); with ``defer_colour=True`` the uint8
      clip before its colour augmentation and normalisation, and
    * ``colour`` (only with ``defer_colour=True``): float ``[..., 3, 9]``, the colour map that
      :func:`msta.transforms.finish` (or ``batch_video``) applies on the training device, so that
      loader workers do the least work and send a quarter of the bytes,
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
        views: str | tuple[int, int] = (1, 1),
        max_retries: int = 10,
        threads: int = 1,
        stats: Stats | None = None,
        defer_colour: bool = False,
    ) -> None:
        check_decoder(decoder)
        if num_frames <= 0 or input_size <= 0:
            raise DataError("num_frames and input_size must be positive")
        clips, crops = parse_views(views if isinstance(views, str) else tuple(views))
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
        self.defer_colour = bool(defer_colour)
        self.codec = prepared_codec(self.root)  # frame banks of `msta data prepare`, by the manifest
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
    def prepared(self) -> bool:
        """Whether the root is a prepared directory (``msta data prepare``)."""
        return self.codec is not None

    @property
    def labels(self) -> list[int]:
        return [label for _, label in self.items]

    def path_of(self, index: int) -> Path:
        rel = self.items[index][0]
        return video_path(self.root, rel, self.codec)

    def _load(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 views of video ``index`` and their colour maps (see :func:`msta.transforms.finish`)."""
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
            return train_views(frames, self.input_size, rng, self.hflip, self.stats)
        t = self.num_frames
        views = [
            eval_views(frames[k * t : (k + 1) * t], self.input_size, crops, self.stats) for k in range(clips)
        ]
        if clips == 1:
            return views[0]
        # clip-major [clips * crops, T, 3, S, S] and [clips * crops, 3, 9]
        return (
            torch.cat([v.reshape(-1, *v.shape[-4:]) for v, _ in views]),
            torch.cat([c.reshape(-1, *c.shape[-2:]) for _, c in views]),
        )

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
                video, colour = self._load(source, rng)
            except VideoReadError as exc:
                last_error = str(exc)
                _warn_once(str(self.path_of(source)), f"skipping unreadable video: {exc}")
                pick = sample_rng(self.seed, epoch, index, attempt + 1)
                nxt = int(pick.integers(len(self.items)))
                if nxt == source and len(self.items) > 1:
                    nxt = (nxt + 1 + int(pick.integers(len(self.items) - 1))) % len(self.items)
                source = nxt
                continue
            extra = {"colour": colour} if self.defer_colour else {}
            return {
                "video": video if self.defer_colour else finish(video, colour),
                **extra,
                "label": self.items[source][1],
                "index": index,
                "source": source,
                "skipped": attempt,
            }
        raise DataError(
            f"{self.max_retries + 1} videos in a row could not be read while loading sample {index} "
            f"(root {self.root}); last error: {last_error}. Run 'msta data check' on the list."
        )


# ------------------------------------------------------------------------------------ throughput


def loader_throughput(
    items: Sequence[tuple[str, int]],
    root: str | Path,
    workers: int = 2,
    clips: int = 64,
    input_size: int = 224,
    num_frames: int = 8,
    batch_size: int = 8,
    decoder: str = "pyav",
) -> dict[str, Any]:
    """Clips per second of the training loader (decode + training transforms + collation) over
    ``clips`` clips of ``items`` (repeated as needed), as training runs it: the workers deliver uint8
    clips and their colour maps, which the training step finishes on its device.

    The first ``max(1, workers)`` batches (worker start-up, built in parallel) are not timed, unless
    there are no others: the rate is that of the batches after them, from the arrival of the last
    untimed batch to the arrival of the last batch."""
    import time

    from torch.utils.data import DataLoader

    if clips <= 0 or workers < 0 or batch_size <= 0:
        raise DataError("clips and batch size must be positive, workers not negative")
    if not items:
        raise DataError("the video list is empty")
    reps = -(-clips // len(items))
    ds = VideoDataset((list(items) * reps)[:clips], root, num_frames, True, input_size, hflip=True,
                      decoder=decoder, seed=0, defer_colour=True)  # fmt: skip
    loader = DataLoader(ds, batch_size=min(batch_size, clips), num_workers=workers, shuffle=False)
    start = time.perf_counter()
    arrivals = [(start, 0)]
    for batch in loader:
        arrivals.append((time.perf_counter(), int(batch["video"].shape[0])))
    skip = min(max(1, workers), len(arrivals) - 2) if len(arrivals) > 2 else 0
    timed = sum(n for _, n in arrivals[skip + 1 :])
    seconds = arrivals[-1][0] - arrivals[skip][0]
    return {
        "clips_per_s": timed / seconds if seconds > 0 else float("nan"),
        "clips": sum(n for _, n in arrivals),
        "timed_clips": timed,
        "seconds": seconds,
        "workers": workers,
        "batch_size": min(batch_size, clips),
        "frames": num_frames,
        "input_size": input_size,
        "prepared": ds.prepared,
        "codec": ds.codec,
        "colour": "on the training device",
        "root": str(root),
    }


__all__ = [
    "ClassSpecError",
    "ListEntry",
    "VideoDataset",
    "default_hflip",
    "load_classes",
    "loader_throughput",
    "parse_video_list",
    "read_video_list",
    "sample_rng",
    "segment_indices",
]
