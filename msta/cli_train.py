"""``msta train``, ``msta eval`` and ``msta predict``: thin layers over :mod:`msta.train`,
:mod:`msta.evaluate` and :mod:`msta.predict` (registered by :mod:`msta.cli`; user errors are raised)."""

from __future__ import annotations

import json
from typing import Any

import typer

from msta.errors import TrainError

_CONFIG_HELP = "YAML config file or preset name (repeatable, merged in order)."
_SET_HELP = "Override a key: --set optim.lr=1e-3 (repeatable)."


def train_command(
    config: list[str] = typer.Option([], "--config", "-c", help=_CONFIG_HELP),
    overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
    descriptions: str | None = typer.Option(
        None, "--descriptions", "-d", help="Description cache (SQLite) for the consistency loss."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in run.out from its last checkpoint."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train MSTA adapters (one process, or many under torchrun)."""
    from msta.train import resolve_train_config, train

    cfg = resolve_train_config(config, overrides, resume)
    train(cfg, descriptions=descriptions, resume=resume, progress=progress)


def eval_command(
    run: str | None = typer.Argument(None, help="Run directory (run.out of a training run)."),
    zero_shot: bool = typer.Option(
        False, "--zero-shot", help="Score the frozen backbone of --config (adapters off) instead of a run."
    ),
    config: list[str] = typer.Option([], "--config", "-c", help=_CONFIG_HELP + " With --zero-shot."),
    split: list[str] = typer.Option(
        [], "--split", help="Video list to evaluate instead of the configured ones (repeatable; mean ± std)."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Class list of the --split lists (default: data.classes)."
    ),
    root: str | None = typer.Option(
        None, "--root", help="Video root of the --split lists (default: data.root)."
    ),
    target: str | None = typer.Option(
        None,
        "--target",
        help="Dataset preset whose zero-shot splits to evaluate (hmdb51, ucf101, k600); needs --root.",
    ),
    views: str | None = typer.Option(
        None, "--views", help="CLIPSxCROPS, e.g. 1x1 (default: eval.views) or 4x3."
    ),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last, best or both."),
    classifier: str = typer.Option(
        "names",
        "--classifier",
        help="Class weights: names (the class prompts) or descriptions (prompt + description ensemble).",
    ),
    descriptions: str | None = typer.Option(
        None, "--descriptions", "-d", help="Description cache (SQLite) for --classifier descriptions."
    ),
    set_id: str | None = typer.Option(
        None, "--set-id", help="Description set (an id prefix; default: the one that covers the classes)."
    ),
    overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON (top1, top5 in 0..1, ...)."),
    plots: bool = typer.Option(
        True, "--plots/--no-plots", help="Write the confusion-matrix and training-curve PNGs."
    ),
) -> None:
    """Evaluate a run (or, with --zero-shot, a backbone): top-1/top-5, per-class accuracy,
    base/novel/HM, mean ± std over splits."""
    from msta.classifier import ClassifierSpec
    from msta.evaluate import compact, evaluate_run, evaluate_zero_shot

    spec = ClassifierSpec(classifier, descriptions, set_id)
    if zero_shot == (run is not None):
        raise TrainError("give a run directory, or --zero-shot with --config (not both)")
    if config and not zero_shot:
        raise TrainError("--config is for --zero-shot; a run brings its own configuration (use --set)")
    if zero_shot:
        report = evaluate_zero_shot(config, overrides, split, classes, root, views, target, spec)
    else:
        report = evaluate_run(
            run,
            splits=split,
            views=views,
            checkpoint=checkpoint,
            classes=classes,
            root=root,
            overrides=overrides,
            plots=plots,
            target=target,
            classifier=spec,
        )
    if as_json:
        print(json.dumps(compact(report)))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    reports = report.get("checkpoints") or {report["checkpoint"]: report}
    for which, r in reports.items():
        title = f"{which} checkpoint (epoch {r.get('epoch')}, step {r.get('global_step')})"
        if which == "zero-shot":
            title = "zero-shot backbone"
        kind = (r.get("classifier") or {}).get("kind", "names")
        table = Table(title=f"{title}, views {r['views']}, classifier {kind}")
        for col in ("split", "videos", "classes", "top-1", "top-5", "mean class acc."):
            table.add_column(col)
        for name, s in r["splits"].items():
            table.add_row(
                name,
                str(s["n"]),
                str(len(s["classes"])),
                f"{100 * s['top1']:.2f}",
                f"{100 * s['top5']:.2f}",
                f"{100 * s['mean_class_accuracy']:.2f}",
            )
        console.print(table)
        for g, v in r.get("groups", {}).items():
            console.print(
                f"{g}: top-1 {100 * v['top1']['mean']:.2f} ± {100 * v['top1']['std']:.2f}, "
                f"top-5 {100 * v['top5']['mean']:.2f} ± {100 * v['top5']['std']:.2f} over {len(v['splits'])} splits"
            )
        if "base_to_novel" in r:
            b = r["base_to_novel"]
            console.print(f"base {100 * b['base']:.2f}, novel {100 * b['novel']:.2f}, HM {100 * b['hm']:.2f}")
    first = next(iter(reports.values()))
    console.print(
        f"top-1 {100 * first['top1']:.2f}, top-5 {100 * first['top5']:.2f} ({first['checkpoint']}"
        f"{'' if first['checkpoint'] == 'zero-shot' else ' checkpoint'})"
    )


def predict_command(
    video: str = typer.Argument(..., help="Video file (or folder of frames)."),
    classes: str | None = typer.Option(None, "--classes", help='Candidate classes: "a,b,c".'),
    classes_file: str | None = typer.Option(
        None, "--classes-file", help="Candidate classes from a class-list file."
    ),
    run: str | None = typer.Option(
        None, "--run", help="Trained run directory (default: zero-shot backbone)."
    ),
    topk: int = typer.Option(5, "--topk", help="How many classes to show."),
    checkpoint: str = typer.Option("last", "--checkpoint", help="last or best (with --run)."),
    views: str = typer.Option("1x1", "--views", help="CLIPSxCROPS."),
    config: list[str] = typer.Option([], "--config", "-c", help=_CONFIG_HELP + " Zero-shot backbone."),
    overrides: list[str] = typer.Option([], "--set", help=_SET_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Top-k classes with probabilities for one video."""
    from msta.predict import predict

    if run is not None and config:
        raise TrainError(
            "--config is for the zero-shot backbone; a --run brings its own configuration (use --set)"
        )
    result = predict(
        video,
        classes=classes,
        classes_file=classes_file,
        run=run,
        configs=config,
        overrides=overrides,
        topk=topk,
        checkpoint=checkpoint,
        views=views,
    )
    if as_json:
        print(json.dumps(result))
        return
    print(f"{result['video']} ({result['mode']}):")
    for p in result["predictions"]:
        print(f"  {p['probability']:.4f}  {p['class']}")
