"""``msta data prepare``: decode every video of a list once into a frame bank built for random access.

Format (read by :class:`msta.video.PreparedReader`): one file per video,
``<out>/videos/<list path>.jpgs``, holding **every** decoded frame in decoding order as a JPEG
(quality 90, full 4:4:4 chroma by default, or 4:2:0 with ``--chroma 420``), or with ``--codec raw``
``<out>/videos/<list path>.rgbs`` holding every frame as uncompressed RGB bytes (no decoding at all
when reading, for about 3 bytes per pixel per frame on disk). Frames are resized so that the short
side is at most 256 px (the short side the transforms resize to for a 224 px input; smaller videos
keep their size). A JPEG bank starts with an offset table; raw frames all have the same size, so the
header is enough to find them. Frame ``i`` of the bank is frame ``i`` of the raw video, so TSN
sampling (``segment_indices``) picks the same indices and the same frames with the same lists; a clip
reads only its 8 frames. A directory holds one encoding (codec, short side, quality, chroma).

Robustness:

* every file is written under a temporary name and renamed when complete, so a killed run never
  leaves a file that reads as valid; a rerun skips the videos already stored and finishes the rest;
* a video that cannot be decoded is recorded (``failed`` in the manifest, and ``prepare-report.txt``),
  counted, and skipped; the dataset replaces it like any unreadable video;
* ``--shard I/N`` prepares every N-th video of the list (disjoint files) and records its part in
  ``parts/``; the manifest ``prepared.json`` is written by whichever run finds all parts of a list
  complete (the last shard to finish), or by a final run without ``--shard``, which also prepares
  whatever a lost shard left undone. A directory is read as prepared only once the manifest exists.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from descgen.fileio import write_text_atomic
from msta.data import read_video_list
from msta.video import (
    DEFAULT_CODEC,
    PREPARED_CODECS,
    PREPARED_HEADER,
    PREPARED_MANIFEST,
    DataError,
    VideoReadError,
    prepared_path,
    read_prepared_header,
    short_error,
)

SHORT_SIDE = 256
QUALITY = 90
CHROMA = {"444": 0, "420": 2}  # --chroma: Pillow's JPEG subsampling code (4:4:4 full, 4:2:0 halved)


@dataclass(frozen=True)
class Encoding:
    """How frames are stored: the largest short side, the codec (``jpeg`` or uncompressed ``raw``
    RGB), and for JPEG the quality and the chroma sampling."""

    short_side: int = SHORT_SIDE
    quality: int = QUALITY
    chroma: str = "444"
    codec: str = DEFAULT_CODEC

    def check(self) -> None:
        if self.codec not in PREPARED_CODECS:
            raise DataError(f"codec must be one of {', '.join(PREPARED_CODECS)}, not {self.codec!r}")
        if self.chroma not in CHROMA:
            raise DataError(f"chroma must be one of {', '.join(CHROMA)}, not {self.chroma!r}")
        if not 1 <= self.quality <= 100 or self.short_side < 1:
            raise DataError("quality must be 1..100 and short side positive")

    def settings(self) -> dict[str, Any]:
        """What the manifest records (quality and chroma only where they apply)."""
        if self.codec == "raw":
            return {"codec": "raw", "short_side": self.short_side}
        return {
            "codec": "jpeg",
            "short_side": self.short_side,
            "quality": self.quality,
            "chroma": self.chroma,
        }


REPORT_NAME = "prepare-report.txt"


def _layout(codec: str) -> str:
    """The manifest's one-line description of the banks."""
    what = "uncompressed RGB" if codec == "raw" else "JPEG"
    return f"videos/<list path>{PREPARED_CODECS[codec][0]}: every decoded frame as {what}, frame i = frame i of the source"


FORMAT_VERSION = 1


@dataclass
class PrepareResult:
    out: Path
    total: int = 0
    prepared: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    bytes_out: int = 0
    bytes_source: int = 0
    seconds: float = 0.0
    manifest_written: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["out"] = str(self.out)
        return d


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; None -> ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise DataError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise DataError(f"--shard {text}: need 0 <= I < N")
    return i, n


# ------------------------------------------------------------------------------ one video


def _target_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    s = min(h, w)
    if s <= short_side:
        return h, w
    f = short_side / s
    return max(1, int(round(h * f))), max(1, int(round(w * f)))


def _decoded_images(src: Path, short_side: int) -> Iterator[Any]:
    """Every frame of ``src`` as a PIL image, in decoding order, with the short side brought down to at
    most ``short_side`` (all frames get the first frame's stored size). Decoding problems raise
    :class:`VideoReadError`."""
    import av
    from PIL import Image

    size: tuple[int, int] | None = None
    try:
        container = av.open(str(src))
    except Exception as exc:  # FFmpeg errors, OSError...
        raise VideoReadError(f"cannot decode {src}: {short_error(exc)}") from None
    with container:
        if not container.streams.video:
            raise VideoReadError(f"{src} has no video stream")
        frames = container.decode(container.streams.video[0])
        while True:
            try:
                img = next(frames).to_image()
            except StopIteration:
                break
            except Exception as exc:
                raise VideoReadError(f"cannot decode {src}: {short_error(exc)}") from None
            size = size or _target_size(img.height, img.width, short_side)
            yield img if (img.height, img.width) == size else img.resize((size[1], size[0]), Image.BILINEAR)


def _frame_bytes(img: Any, enc: Encoding) -> bytes:
    if enc.codec == "raw":
        return np.asarray(img.convert("RGB"), dtype=np.uint8).tobytes()
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=enc.quality, subsampling=CHROMA[enc.chroma])
    return buf.getvalue()


def _write_bank(src: Path, dst: Path, enc: Encoding) -> dict[str, int]:
    """Decode ``src`` and store its frames under a temporary name, renamed into place when complete.
    Frames stream to disk (a long video never sits in memory). Raw frames go straight after the header,
    which is written again with the frame count at the end; JPEG frames go to a temporary body file
    first, because the offset table in front of them needs their sizes. Returns frames, size, bytes."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.tmp-{os.getpid()}")
    body = tmp.with_name(tmp.name + ".body")
    magic = PREPARED_CODECS[enc.codec][1]
    try:
        with open(tmp, "w+b") as f:
            f.write(PREPARED_HEADER.pack(magic, 0, 0, 0))  # no frames: not a valid bank until rewritten
            if enc.codec == "raw":
                sizes, h, w = _write_frames(src, enc, f)
            else:
                with open(body, "w+b") as b:
                    sizes, h, w = _write_frames(src, enc, b)
                    f.write(np.cumsum([0, *sizes], dtype="<u8").tobytes())  # the offset table
                    b.seek(0)
                    shutil.copyfileobj(b, f, 1 << 22)
            f.seek(0)
            f.write(PREPARED_HEADER.pack(magic, len(sizes), h, w))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        body.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return {"frames": len(sizes), "height": h, "width": w, "bytes": dst.stat().st_size}


def _write_frames(src: Path, enc: Encoding, f: Any) -> tuple[list[int], int, int]:
    """Every frame of ``src``, stored with ``enc``, appended to ``f``: the frames' sizes, the height and
    the width."""
    sizes: list[int] = []
    h = w = 0
    for img in _decoded_images(src, enc.short_side):
        h, w = img.height, img.width
        sizes.append(f.write(_frame_bytes(img, enc)))
    if not sizes:
        raise VideoReadError(f"{src} has no video frames")
    return sizes, h, w


def _stored_info(dst: Path) -> dict[str, int] | None:
    """Frames, size and bytes of a complete stored bank, or None when there is none."""
    try:
        with open(dst, "rb") as f:
            bank = read_prepared_header(f)
        size = dst.stat().st_size
    except (OSError, VideoReadError):
        return None
    if size != bank.size:
        return None
    return {"frames": bank.frames, "height": bank.height, "width": bank.width, "bytes": size}


def prepare_one(src: Path, dst: Path, enc: Encoding = Encoding()) -> dict[str, Any]:
    """Prepare one video (skipped when already stored). ``{"status": "done"|"skipped"|"failed", ...}``."""
    info = _stored_info(dst)
    source_bytes = src.stat().st_size if src.is_file() else 0
    if info is not None:
        return {"status": "skipped", "source_bytes": source_bytes, **info}
    for stale in dst.parent.glob(f"{glob.escape(dst.name)}.tmp-*") if dst.parent.is_dir() else ():
        stale.unlink(missing_ok=True)  # left by a killed run
    try:
        if not src.is_file():
            raise VideoReadError(f"video not found: {src}")
        info = _write_bank(src, dst, enc)
    except VideoReadError as exc:
        return {"status": "failed", "error": str(exc)}
    return {"status": "done", **info, "source_bytes": source_bytes}


def _job(args: tuple[str, str, str, Encoding]) -> tuple[str, dict[str, Any]]:
    rel, src, dst, enc = args
    try:
        return rel, prepare_one(Path(src), Path(dst), enc)
    except OSError as exc:  # the output side (disk full, permissions): fatal for the run
        return rel, {"status": "error", "error": f"cannot write {dst}: {exc.strerror or exc}"}


# ------------------------------------------------------------------------------ a list


def prepare_list(
    list_file: str | Path,
    root: str | Path,
    out: str | Path,
    workers: int = 1,
    shard: str | None = None,
    short_side: int = SHORT_SIDE,
    quality: int = QUALITY,
    progress: Callable[[int, int], None] | None = None,
    chroma: str = "444",
    codec: str = DEFAULT_CODEC,
) -> PrepareResult:
    """Prepare the videos of a list (or of one shard of it) into ``out``; see the module docstring."""
    i, n = parse_shard(shard)
    enc = Encoding(short_side, quality, chroma, codec)
    enc.check()
    root_p, out_p = Path(root).expanduser(), Path(out).expanduser()
    if not root_p.is_dir():
        raise DataError(f"video root is not a directory: {root_p}")
    if out_p.resolve() == root_p.resolve():
        raise DataError("--out must differ from --root")
    paths = sorted({rel for rel, _ in read_video_list(list_file)})
    mine = paths[i::n]
    _check_same_settings(out_p, enc)
    out_p.mkdir(parents=True, exist_ok=True)
    result = PrepareResult(out=out_p, total=len(mine))
    t0 = time.perf_counter()
    jobs = [(rel, str(root_p / rel), str(prepared_path(out_p, rel, enc.codec)), enc) for rel in mine]
    videos: dict[str, dict[str, Any]] = {}
    for rel, res in _run_jobs(jobs, workers, progress):
        status = res.pop("status")
        if status == "error":
            raise DataError(res["error"])
        if status == "failed":
            result.failed[rel] = res["error"]
            continue
        videos[rel] = res
        result.prepared += status == "done"
        result.skipped += status == "skipped"
        result.bytes_out += res["bytes"]
        result.bytes_source += res["source_bytes"]
    result.seconds = time.perf_counter() - t0
    part = {"list": str(list_file), "shard": [i, n], "videos": videos, "failed": result.failed,
            "settings": enc.settings()}  # fmt: skip
    _write_json(out_p / "parts" / f"{_list_id(paths)}-{i}-of-{n}.json", part)
    result.manifest_written = write_manifest(out_p)
    return result


def _run_jobs(jobs: list[tuple], workers: int, progress: Callable[[int, int], None] | None):
    total = len(jobs)
    if progress:
        progress(0, total)
    if workers <= 1 or total <= 1:
        for done, job in enumerate(jobs, start=1):
            yield _job(job)
            if progress:
                progress(done, total)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    # fork: workers start at once and need no importable main module; they only use av and PIL
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(max_workers=min(workers, total), mp_context=ctx) as pool:
        futures = [pool.submit(_job, job) for job in jobs]
        try:
            for done, fut in enumerate(as_completed(futures), start=1):
                try:
                    result = fut.result()
                except BrokenProcessPool:
                    raise DataError(
                        "a preparation process died (out of memory?); run the same command again to resume"
                    ) from None
                yield result
                if progress:
                    progress(done, total)
        finally:
            for fut in futures:
                fut.cancel()


def _check_same_settings(out: Path, enc: Encoding) -> None:
    """One encoding per prepared directory: its readers look for one file suffix, and its manifest
    records one set of settings."""
    wanted = enc.settings()
    for p in sorted((out / "parts").glob("*-of-*.json")) if (out / "parts").is_dir() else ():
        try:
            stored = json.loads(p.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError):
            continue
        stored = {"codec": DEFAULT_CODEC, **stored}  # parts written before there was a choice of codec
        keys = ["codec"] if stored["codec"] != wanted["codec"] else list(wanted)
        differ = [f"{k} {stored.get(k)} (not {wanted[k]})" for k in keys if stored.get(k) != wanted[k]]
        if differ:
            raise DataError(
                f"{out} holds frames stored with {', '.join(differ)}: use those settings or another --out"
            )


def _list_id(paths: list[str]) -> str:
    """A short fingerprint of a list's video paths (names its parts)."""
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()[:12]


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True))


def _complete_parts(out: Path) -> list[dict[str, Any]]:
    """Parts of every list whose shards are all present (for each list, the complete set with the
    fewest shards); parts of incomplete shardings are left out."""
    groups: dict[tuple[str, int], dict[int, Path]] = {}
    for p in sorted((out / "parts").glob("*-of-*.json")):
        try:
            lid, i, _, n = p.stem.rsplit("-", 3)
            groups.setdefault((lid, int(n)), {})[int(i)] = p
        except ValueError:
            continue
    chosen: dict[str, dict[int, Path]] = {}
    for (lid, n), found in sorted(groups.items(), key=lambda kv: kv[0][1]):
        if lid not in chosen and len(found) == n:
            chosen[lid] = found
    parts = []
    for found in chosen.values():
        for p in found.values():
            parts.append(json.loads(p.read_text(encoding="utf-8")))
    return parts


def write_manifest(out: str | Path) -> bool:
    """(Re)write ``prepared.json`` and the report from every complete set of parts. False when no list
    is complete yet. The result depends only on the parts, so concurrent shards agree."""
    out = Path(out)
    parts = _complete_parts(out)
    if not parts:
        return False
    videos: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for part in parts:
        videos.update(part["videos"])
        failed.update(part["failed"])
    failed = {k: v for k, v in failed.items() if k not in videos}
    settings = parts[0].get("settings", {})
    manifest = {
        "format": "msta-prepared",
        "version": FORMAT_VERSION,
        "layout": _layout(settings.get("codec", DEFAULT_CODEC)),
        **settings,
        "lists": sorted({p["list"] for p in parts}),
        "num_videos": len(videos),
        "num_failed": len(failed),
        "bytes": sum(v["bytes"] for v in videos.values()),
        "source_bytes": sum(v.get("source_bytes", 0) for v in videos.values()),
        "videos": dict(sorted(videos.items())),
        "failed": dict(sorted(failed.items())),
    }
    lines = [f"{len(videos)} videos prepared, {len(failed)} unreadable (skipped)"]
    lines += [f"unreadable: {rel}: {err}" for rel, err in sorted(failed.items())]
    write_text_atomic(out / REPORT_NAME, "\n".join(lines) + "\n")
    _write_json(out / PREPARED_MANIFEST, manifest)
    return True


__all__ = ["Encoding", "PrepareResult", "parse_shard", "prepare_list", "prepare_one", "write_manifest"]
