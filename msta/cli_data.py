"""``msta data check``, ``synth``, ``prepare`` and ``bench``: command functions, registered by :mod:`msta.cli`.

User errors are raised (``MstaError`` subclasses); the command line turns them into one message."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from msta.checks import CheckReport


def _progress(description: str):  # -> (Progress, callback)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn(description),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = progress.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        progress.update(task, completed=done, total=total)

    return progress, update


def check_command(
    list_file: Path = typer.Option(..., "--list", help="Video list: '<relative path> <label id>' per line."),
    root: Path = typer.Option(..., "--root", help="Directory the list's paths are relative to."),
    classes: str | None = typer.Option(
        None, "--classes", help="Class-list file or built-in dataset name; enables the label range check."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Data directory for built-in dataset names."
    ),
    decoder: str = typer.Option("pyav", "--decoder", help="pyav, decord or frames."),
    workers: int = typer.Option(4, "--workers", min=1, help="Videos probed in parallel."),
    frames: int = typer.Option(
        8, "--frames", min=1, help="Frames decoded per video (evaluation sampling); 1 = first frame only."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the full report as JSON on stdout."),
    show: int = typer.Option(20, "--show", min=0, help="Problems listed per kind (text output)."),
) -> None:
    """Count videos per class and find missing files, videos that do not decode, malformed lines and
    label ids out of range. Exit code 0 when clean, 1 when problems were found, 2 for bad input."""
    from msta.checks import check_list
    from msta.data import load_classes

    num_classes = len(load_classes(classes, data_dir)) if classes is not None else None
    progress, update = _progress("Checking videos")
    with progress:
        report = check_list(
            list_file, root, num_classes=num_classes, decoder=decoder, workers=workers,
            num_frames=frames, progress=update,
        )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report, show)
    raise typer.Exit(0 if report.ok else 1)


def _print_report(report: CheckReport, show: int) -> None:
    """Problems (at most ``show`` per kind) on stderr; counts and the summary line on stdout."""
    n = report.num_classes
    kinds = [
        ("malformed line", report.malformed, lambda p: f"line {p['line']}: {p['error']}: {p['text']!r}"),
        ("missing", report.missing, lambda p: f"line {p['line']}: {p['path']}"),
        ("unreadable", report.unreadable, lambda p: f"line {p['line']}: {p['path']}: {p['error']}"),
        (
            "label out of range",
            report.out_of_range,
            lambda p: f"line {p['line']}: {p['path']}: label {p['label']} (classes: {n})",
        ),
    ]
    for kind, items, fmt in kinds:
        for p in items[:show]:
            typer.echo(f"{kind}: {fmt(p)}", err=True)
        if len(items) > show:
            typer.echo(f"{kind}: ... {len(items) - show} more", err=True)
    if report.empty_classes:
        shown = ", ".join(str(c) for c in report.empty_classes[:20])
        more = " ..." if len(report.empty_classes) > 20 else ""
        typer.echo(f"note: {len(report.empty_classes)} classes have no videos: {shown}{more}", err=True)
    counts = sorted(report.per_class.values())
    if counts:
        typer.echo(f"videos per class: min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}")
    status = "OK" if report.ok else f"{report.problems} problems"
    typer.echo(f"{status}: {report.summary()}")


def synth_command(
    out: Path = typer.Option(..., "--out", help="Output directory (becomes the video root)."),
    videos_per_class: int = typer.Option(40, "--videos-per-class", min=1, help="Training videos per class."),
    val_per_class: int = typer.Option(16, "--val-per-class", min=0, help="Validation videos per class."),
    frames: int = typer.Option(16, "--frames", min=2, help="Frames per video."),
    size: int = typer.Option(64, "--size", min=16, help="Frame width and height in pixels (even)."),
    fps: int = typer.Option(16, "--fps", min=1, help="Frame rate written to the files."),
    motions: str = typer.Option(
        "directions",
        "--motions",
        help="Motion set (horizontal, directions, all) or comma-separated motions "
        "(left_to_right, right_to_left, top_to_bottom, bottom_to_top, clockwise, counterclockwise, growing, shrinking).",
    ),
    style: str = typer.Option(
        "plain", "--style", help="plain: bright shapes on dark backgrounds; textured: harder, any colours."
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Random seed; the frames are a function of all options."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing synthetic dataset in --out."),
) -> None:
    """Write a small synthetic dataset of real mp4 videos whose classes differ only in motion,
    with train/val lists, a class list and a manifest."""
    from msta.synth import synth_dataset

    progress, update = _progress("Writing videos")
    with progress:
        result = synth_dataset(
            out, videos_per_class=videos_per_class, val_per_class=val_per_class, frames=frames,
            size=size, seed=seed, motions=motions, fps=fps, style=style, overwrite=force, progress=update,
        )  # fmt: skip
    m = result.manifest
    typer.echo(
        f"Wrote {result.train} training and {result.val} validation videos of {len(result.classes)} classes "
        f"to {result.out_dir} ({m['frames']} frames, {m['size']}x{m['size']}, {m['codec']}); "
        f"classes: {result.out_dir / 'classes.csv'}, hflip must stay off"
    )


def prepare_command(
    list_file: Path = typer.Option(..., "--list", help="Video list: '<relative path> <label id>' per line."),
    root: Path = typer.Option(..., "--root", help="Directory the list's paths are relative to."),
    out: Path = typer.Option(..., "--out", help="Prepared directory (use it as data.root)."),
    workers: int = typer.Option(4, "--workers", min=1, help="Videos decoded in parallel (processes)."),
    shard: str | None = typer.Option(
        None, "--shard", help="I/N: prepare every N-th video from the I-th (0-based), for array jobs."
    ),
    short_side: int = typer.Option(256, "--short-side", min=16, help="Largest stored short side (px)."),
    quality: int = typer.Option(90, "--quality", min=50, max=100, help="JPEG quality of the stored frames."),
    chroma: str = typer.Option(
        "444",
        "--chroma",
        help="JPEG chroma sampling: 444 (full, faithful) or 420 (a third smaller, faster to read).",
    ),
    codec: str = typer.Option(
        "jpeg",
        "--codec",
        help="jpeg (compact) or raw (uncompressed RGB: no decoding when read, about 4x the bytes of jpeg).",
    ),
) -> None:
    """Decode every video of the list once into frame banks built for random access (all frames, JPEG
    or raw RGB, short side at most 256 px). Safe to rerun or resume; unreadable videos are listed, not fatal."""
    from msta.prepare import REPORT_NAME, Encoding, parse_shard, prepare_list

    parse_shard(shard)  # a bad --shard, --chroma or --codec fails before the progress bar starts
    Encoding(short_side, quality, chroma, codec).check()
    progress, update = _progress("Preparing videos")
    with progress:
        res = prepare_list(
            list_file, root, out, workers=workers, shard=shard, short_side=short_side, quality=quality,
            progress=update, chroma=chroma, codec=codec,
        )  # fmt: skip
    mb_out, mb_src = res.bytes_out / 1e6, res.bytes_source / 1e6
    typer.echo(
        f"{res.prepared} videos prepared, {res.skipped} already there, {len(res.failed)} unreadable "
        f"in {res.seconds:.1f} s; {mb_out:.1f} MB stored for {mb_src:.1f} MB of source videos"
    )
    for rel, err in list(res.failed.items())[:20]:
        typer.echo(f"unreadable: {rel}: {err}", err=True)
    if res.manifest_written:
        typer.echo(f"manifest: {res.out / 'prepared.json'}; unreadable videos: {res.out / REPORT_NAME}")
    else:
        typer.echo("manifest not written yet: other shards of this list are still missing")


def bench_command(
    list_file: Path = typer.Option(..., "--list", help="Video list: '<relative path> <label id>' per line."),
    root: Path = typer.Option(..., "--root", help="Video root or prepared directory."),
    workers: int = typer.Option(2, "--workers", min=0, help="DataLoader worker processes."),
    clips: int = typer.Option(64, "--clips", min=1, help="Clips loaded (the list repeats as needed)."),
    size: int = typer.Option(224, "--size", min=16, help="Input size of the model (pixels)."),
    frames: int = typer.Option(8, "--frames", min=1, help="Frames per clip."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Clips per batch."),
    decoder: str = typer.Option("pyav", "--decoder", help="pyav or decord (raw videos)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Clips per second of the training loader: decoding, training transforms and collation."""
    from msta.data import loader_throughput, read_video_list

    res = loader_throughput(
        read_video_list(list_file), root, workers=workers, clips=clips, input_size=size, num_frames=frames,
        batch_size=batch_size, decoder=decoder,
    )  # fmt: skip
    if json_out:
        typer.echo(json.dumps(res, indent=2))
        return
    kind = "prepared" if res["prepared"] else decoder
    typer.echo(
        f"{res['clips_per_s']:.2f} clips/s ({kind}, {workers} workers, {res['timed_clips']} clips timed "
        f"in {res['seconds']:.1f} s, {frames} frames at {size} px)"
    )
