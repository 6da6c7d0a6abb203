"""``msta data check``: counts per class, malformed lines, missing files, videos that do not decode
and label ids out of range in a video list. A prepared root (``msta data prepare``) is checked
through its frame banks; videos its manifest lists as unreadable are reported unreadable."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from msta.data import ListEntry, parse_video_list, segment_indices
from msta.video import (
    DataError,
    check_decoder,
    open_reader,
    prepared_codec,
    read_prepared_manifest,
    short_error,
    video_path,
)


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
        return short_error(exc)
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
    check_decoder(decoder)
    root_p = Path(root).expanduser()
    if not root_p.is_dir():
        raise DataError(f"video root is not a directory: {root_p}")
    entries, bad = parse_video_list(list_file)
    report = CheckReport(list_file=str(list_file), root=str(root_p), num_classes=num_classes)
    report.total = len(entries)
    report.malformed = [{"line": n, "text": text, "error": reason} for n, text, reason in bad]
    _count_labels(report, entries, num_classes)
    report.duplicates = _duplicates(entries)
    locate, known_bad = _locator(root_p)
    present: list[ListEntry] = []
    for e in entries:
        if e.path in known_bad:
            report.unreadable.append({"line": e.line, "path": e.path, "error": known_bad[e.path]})
        elif locate(e.path).exists():
            present.append(e)
        else:
            report.missing.append({"line": e.line, "path": e.path})
    unique = list({e.path: e for e in present}.values())
    nworkers = workers if workers is not None else min(8, os.cpu_count() or 1)
    errors = _probe_all(locate, unique, decoder, num_frames, nworkers, progress)
    report.checked_decoding = len(unique)
    report.unreadable += [
        {"line": e.line, "path": e.path, "error": errors[e.path]} for e in present if e.path in errors
    ]
    report.unreadable.sort(key=lambda p: p["line"])
    return report


def _locator(root: Path) -> tuple[Callable[[str], Path], dict[str, str]]:
    """Where a list path is read from, and the videos a prepared root recorded as unreadable."""
    codec = prepared_codec(root)
    failed = read_prepared_manifest(root).get("failed", {}) if codec else {}
    return (lambda rel: video_path(root, rel, codec)), {str(k): str(v) for k, v in failed.items()}


def _count_labels(report: CheckReport, entries: list[ListEntry], num_classes: int | None) -> None:
    """Videos per class; with ``num_classes``, labels out of range and classes without videos."""
    counts = Counter(e.label for e in entries)
    report.per_class = dict(sorted(counts.items()))
    if num_classes is not None:
        report.out_of_range = [
            {"line": e.line, "path": e.path, "label": e.label} for e in entries if e.label >= num_classes
        ]
        report.empty_classes = [c for c in range(num_classes) if counts.get(c, 0) == 0]


def _duplicates(entries: list[ListEntry]) -> list[dict[str, Any]]:
    """Entries whose path was listed on an earlier line."""
    first: dict[str, int] = {}
    found: list[dict[str, Any]] = []
    for e in entries:
        if e.path in first:
            found.append({"line": e.line, "path": e.path, "first_line": first[e.path]})
        else:
            first[e.path] = e.line
    return found


def _probe_all(
    locate: Callable[[str], Path],
    entries: list[ListEntry],
    decoder: str,
    num_frames: int,
    workers: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, str]:
    """Decode every entry on a thread pool; the error of each path that failed."""
    from concurrent.futures import ThreadPoolExecutor

    total = len(entries)
    if progress:
        progress(0, total)
    errors: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [(e, pool.submit(_probe, locate(e.path), decoder, num_frames)) for e in entries]
        for done, (e, fut) in enumerate(futures, start=1):
            err = fut.result()
            if err is not None:
                errors[e.path] = err
            if progress:
                progress(done, total)
    return errors


__all__ = ["CheckReport", "check_list"]
