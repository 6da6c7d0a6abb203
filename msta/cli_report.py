"""``msta report`` and ``msta sweep``: thin layers over :mod:`msta.report` and :mod:`msta.sweep`
(registered by :mod:`msta.cli`; user errors are raised)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def report_command(
    runs: list[str] = typer.Argument(..., help="Run directories, or folders that hold runs (a sweep's out)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    out: Path | None = typer.Option(
        None, "--out", help="Write report.md, report.json and report.png here (default: only print)."
    ),
) -> None:
    """Aggregate runs over seeds (base-to-novel HM of means, zero-shot mean ± std over splits, ...)
    and compare them with the published numbers."""
    from msta.report import build_report, markdown, write_report

    report = build_report(list(runs))
    if out is not None:
        files = write_report(report, out)
        typer.echo(f"wrote {', '.join(str(p) for p in files.values())}", err=True)
    if as_json:
        print(json.dumps(report))
    else:
        print(markdown(report), end="")


def sweep_command(
    plan: str = typer.Argument(..., help="Plan YAML file, or the name of a shipped plan (paper)."),
    slurm: bool = typer.Option(False, "--slurm", help="Submit each run as a Slurm job (submitit) and wait."),
    partition: str | None = typer.Option(None, "--partition", help="Slurm partition."),
    time_min: int = typer.Option(240, "--time", min=1, help="Slurm time limit per run, in minutes."),
    gpus: int = typer.Option(1, "--gpus", min=1, help="GPUs per Slurm job (more than one: torchrun)."),
    cpus: int = typer.Option(8, "--cpus", min=1, help="CPUs per Slurm job."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Progress bars of local runs."),
) -> None:
    """Train and evaluate every run of a plan that is not done yet, then write the report."""
    from msta.sweep import SlurmOptions, sweep

    options = SlurmOptions(partition, time_min, gpus, cpus) if slurm else None
    sweep(plan, slurm=options, progress=progress, log=lambda m: typer.echo(m, err=True))
