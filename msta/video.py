"""Video readers: PyAV (default), decord (optional), folders of pre-extracted frames and prepared
frame banks (written by ``msta data prepare``, see :mod:`msta.prepare`).

A directory is always read as a folder of frames (``img_00001.jpg`` ..., in natural name order).
A file ending in a suffix of :data:`PREPARED_CODECS` is always read as a prepared frame bank, whatever the
decoder.
Every reader has ``num_frames`` and ``get(indices)`` returning uint8 RGB ``[T, H, W, 3]``, and is a
context manager. Readers are opened per sample, so DataLoader workers never share a decoder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from msta.errors import MstaError

DECODERS = ("pyav", "decord", "frames")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Prepared frame banks: one file per video, ``<out>/videos/<list path><suffix>``, holding every decoded
# frame. Header ``<8s I I I`` (magic, frames, height, width), then for JPEG (codec ``jpeg``, suffix
# ``.jpgs``) ``frames + 1`` little-endian uint64 offsets (relative to the end of the offset table) and
# the JPEG files; for uncompressed frames (codec ``raw``, ``.rgbs``) the ``height x width x 3`` RGB
# bytes of each frame in turn, frame ``i`` at ``header + i * height * width * 3``.
PREPARED_MANIFEST = "prepared.json"
PREPARED_CODECS = {"jpeg": (".jpgs", b"MSTAJPG1"), "raw": (".rgbs", b"MSTARGB1")}  # codec: (suffix, magic)
DEFAULT_CODEC = "jpeg"  # also the codec of directories prepared before there was a choice
PREPARED_HEADER = struct.Struct("<8sIII")


class DataError(MstaError):
    """A data problem the user can fix (bad list file, unknown decoder, unreadable video...)."""


class VideoReadError(DataError):
    """One video cannot be opened or decoded."""


def check_decoder(decoder: str) -> None:
    """Raise :class:`DataError` for an unknown decoder or one that is not installed."""
    if decoder not in DECODERS:
        raise DataError(f"unknown decoder {decoder!r}: choose one of {', '.join(DECODERS)}")
    if decoder == "decord" and not decord_available():
        raise DataError("decoder 'decord' is not installed: pip install decord==0.6.0")


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
            raise VideoReadError(f"cannot open {self.path}: {short_error(exc)}") from None
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
            raise VideoReadError(f"cannot read {self.path}: {short_error(exc)}") from None
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
            raise VideoReadError(f"cannot decode {self.path}: {short_error(exc)}") from None
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
            raise VideoReadError(f"cannot open {self.path}: {short_error(exc)}") from None
        if self.num_frames <= 0:
            raise VideoReadError(f"{self.path} has no video frames")

    def get(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        wanted = sorted(set(idx))
        try:
            batch = self._vr.get_batch(wanted).asnumpy()
        except Exception as exc:
            raise VideoReadError(f"cannot decode {self.path}: {short_error(exc)}") from None
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
                    raise VideoReadError(f"cannot read frame {self._files[i]}: {short_error(exc)}") from None
        shapes = {a.shape for a in cache.values()}
        if len(shapes) > 1:
            raise VideoReadError(f"frames of {self.path} differ in size: {sorted(shapes)}")
        return np.stack([cache[i] for i in idx])


class PreparedReader(_Reader):
    """A prepared frame bank: frame ``i`` is the ``i``-th decoded frame of the source video, so TSN
    indices mean the same frames as with the raw video. Only the requested frames are read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: Any = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise VideoReadError(
                f"prepared video not found: {self.path} (unreadable when prepared, or not prepared)"
            ) from None
        except OSError as exc:
            raise VideoReadError(f"cannot open {self.path}: {exc.strerror or exc}") from None
        try:
            bank = read_prepared_header(self._file)
        except VideoReadError:
            self.close()
            raise
        self.bank = bank
        self.codec, self.num_frames, self.height, self.width = (
            bank.codec,
            bank.frames,
            bank.height,
            bank.width,
        )

    def _read(self, i: int, into: memoryview | None = None) -> bytes:
        """Frame ``i``'s stored bytes; with ``into`` (of the frame's size) read into it instead."""
        start, end = int(self.bank.offsets[i]), int(self.bank.offsets[i + 1])
        try:
            self._file.seek(self.bank.data_start + start)
            if into is None:
                data = self._file.read(end - start)
                got = len(data)
            else:
                data, got = b"", self._file.readinto(into)
        except OSError as exc:
            raise VideoReadError(f"cannot read frame {i} of {self.path}: {short_error(exc)}") from None
        if got != end - start:
            raise VideoReadError(f"cannot read frame {i} of {self.path}: the file is truncated")
        return data

    def _read_frames(self, wanted: list[int]) -> np.ndarray:
        if self.codec != "raw":
            return decode_jpegs([self._read(i) for i in wanted], self.path)
        frames = np.empty((len(wanted), self.height, self.width, 3), dtype=np.uint8)
        for k, i in enumerate(wanted):
            self._read(i, memoryview(frames[k]).cast("B"))
        return frames

    def get(self, indices: Sequence[int]) -> np.ndarray:
        idx = self._check(indices)
        wanted = sorted(set(idx))
        frames = self._read_frames(wanted)
        if wanted == idx:  # TSN indices: increasing, no repeats; no copy needed
            return frames
        pos = {i: k for k, i in enumerate(wanted)}
        return frames[[pos[i] for i in idx]]

    def close(self) -> None:
        f = getattr(self, "_file", None)
        if f is not None:
            self._file = None
            f.close()


def decode_jpegs(blobs: Sequence[bytes], where: Path | str) -> np.ndarray:
    """JPEG frames -> uint8 ``[T, H, W, 3]`` (libjpeg-turbo through simplejpeg)."""
    import simplejpeg

    try:
        # fastupsample: replicate 4:2:0 chroma as FFmpeg's yuv420p->RGB conversion does (closer to the
        # raw decode than smooth upsampling); no effect on 4:4:4 frames
        return np.stack([simplejpeg.decode_jpeg(b, colorspace="RGB", fastupsample=True) for b in blobs])
    except ValueError as exc:  # corrupt data, or frames of different sizes
        raise VideoReadError(f"cannot decode a frame of {where}: {short_error(exc)}") from None


class BankHeader(NamedTuple):
    """What the start of a prepared frame bank says: frame ``i`` is stored at
    ``data_start + offsets[i]`` and takes ``offsets[i + 1] - offsets[i]`` bytes."""

    codec: str
    frames: int
    height: int
    width: int
    offsets: np.ndarray
    data_start: int

    @property
    def size(self) -> int:
        """The size of the complete file."""
        return self.data_start + int(self.offsets[-1])


def read_prepared_header(f: Any) -> BankHeader:
    """The header of an open prepared frame bank."""
    name = getattr(f, "name", "prepared video")
    head = f.read(PREPARED_HEADER.size)
    codec = next((c for c, (_, magic) in PREPARED_CODECS.items() if head[:8] == magic), None)
    if len(head) != PREPARED_HEADER.size or codec is None:
        raise VideoReadError(f"{name} is not a prepared video (bad header)")
    _, n, h, w = PREPARED_HEADER.unpack(head)
    if n <= 0:
        raise VideoReadError(f"{name} is truncated or holds no frames")
    if codec == "raw":  # fixed-size frames: the offsets follow from the header
        offsets = np.arange(n + 1, dtype=np.int64) * (h * w * 3)
        return BankHeader(codec, int(n), int(h), int(w), offsets, PREPARED_HEADER.size)
    table = f.read(8 * (n + 1))
    if len(table) != 8 * (n + 1):
        raise VideoReadError(f"{name} is truncated or holds no frames")
    offsets = np.frombuffer(table, dtype="<u8")
    return BankHeader(codec, int(n), int(h), int(w), offsets, PREPARED_HEADER.size + len(table))


def is_prepared(root: str | Path) -> bool:
    """Whether ``root`` is a complete prepared directory (it holds the manifest)."""
    return (Path(root) / PREPARED_MANIFEST).is_file()


def video_path(root: str | Path, rel: str, codec: str | None) -> Path:
    """Where list path ``rel`` is read from: ``root / rel`` under a video root (``codec`` None), its frame
    bank under a prepared directory (``codec``: the directory's, :func:`prepared_codec`)."""
    return prepared_path(root, rel, codec) if codec else Path(root) / rel


def prepared_path(root: str | Path, rel: str, codec: str) -> Path:
    """Where the prepared frame bank of list path ``rel`` lives under the prepared directory ``root``
    (``codec``: the directory's, :func:`prepared_codec`).

    List paths keep their folders; a path that is absolute or climbs out (``..``) is stored under a
    hash of its text instead, so nothing is ever written outside ``root``."""
    suffix = PREPARED_CODECS[codec][0]
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or not parts:
        return Path(root) / "videos" / "_hashed" / (hashlib.sha1(rel.encode()).hexdigest() + suffix)
    return Path(root) / "videos" / (rel + suffix)


def prepared_codec(root: str | Path) -> str | None:
    """The codec of a prepared directory's frame banks; None when ``root`` is not prepared."""
    if not is_prepared(root):
        return None
    codec = read_prepared_manifest(root).get("codec", DEFAULT_CODEC)
    if codec not in PREPARED_CODECS:
        raise DataError(f"{Path(root) / PREPARED_MANIFEST}: unknown codec {codec!r}")
    return str(codec)


def read_prepared_manifest(root: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory (raises :class:`DataError` when it cannot be read). Parsed
    once per version of the file (a manifest lists every video; callers must not change it)."""
    p = Path(root) / PREPARED_MANIFEST
    try:
        st = p.stat()
        obj = _parse_manifest(str(p), st.st_mtime_ns, st.st_size)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the prepared-data manifest {p}: {exc}") from None
    if not isinstance(obj, dict) or obj.get("format") != "msta-prepared":
        raise DataError(f"{p} is not a prepared-data manifest")
    return obj


@functools.lru_cache(maxsize=4)
def _parse_manifest(path: str, mtime_ns: int, size: int) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


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
    if p.name.endswith(tuple(suffix for suffix, _ in PREPARED_CODECS.values())):
        return PreparedReader(p)
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


def short_error(exc: BaseException) -> str:
    strerror = getattr(exc, "strerror", None)  # FFmpeg and OS errors: the message without the path
    text = (strerror if isinstance(strerror, str) and strerror else str(exc)).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


__all__ = [
    "DECODERS",
    "DataError",
    "DecordReader",
    "FramesReader",
    "PREPARED_HEADER",
    "PREPARED_MANIFEST",
    "DEFAULT_CODEC",
    "PREPARED_CODECS",
    "PreparedReader",
    "PyAVReader",
    "VideoReadError",
    "check_decoder",
    "decord_available",
    "is_prepared",
    "open_reader",
    "prepared_codec",
    "prepared_path",
    "video_path",
    "read_prepared_header",
    "read_prepared_manifest",
    "short_error",
]
