"""``msta compare``: description sets side by side by the zero-shot accuracy of their classifiers,
their cost and their audit (a thin layer over :mod:`msta.compare`; registered by :mod:`msta.cli`)."""

from __future__ import annotations

import json

import typer


def compare_command(
    sets: list[str] = typer.Argument(..., help="Description set ids (prefixes) to compare."),
    cache: str = typer.Option(..., "--cache", help="Description cache (SQLite) holding the sets."),
    val_list: str = typer.Option(..., "--val-list", help="Labelled video list: path label per line."),
    root: str = typer.Option(..., "--root", help="Directory that holds the videos of --val-list."),
    classes: str | None = typer.Option(
        None, "--classes", help="Class list the labels index (default: data.classes of the config)."
    ),
    config: list[str] = typer.Option(
        [], "--config", "-c", "--backbone", help="Backbone config file or preset (repeatable)."
    ),
    overrides: list[str] = typer.Option([], "--set", help="Override a key: --set run.device=cpu."),
    views: str = typer.Option("1x1", "--views", help="CLIPSxCROPS."),
    pricing: str | None = typer.Option(None, "--pricing", help="Price table (TOML) instead of descgen's."),
    out: str | None = typer.Option(
        None, "--out", help="Directory for compare.md, compare.json and compare.html."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of Markdown."),
) -> None:
    """Zero-shot top-1 of each description set's classifier on a labelled video list, per-class
    wins and losses, tokens and cost, audit findings: Markdown, JSON and HTML."""
    from msta.compare import compare, render_markdown, write_outputs

    result = compare(cache, sets, val_list, root, config, overrides, classes, views, pricing)
    if out is not None:
        paths = write_outputs(result, out)
        typer.echo(f"wrote {', '.join(str(p) for p in paths.values())}", err=True)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(render_markdown(result), end="")
