"""``msta params``: trainable and total parameter counts for a configuration."""

from __future__ import annotations

import json
import sys
from typing import Any

import typer

from msta.cli import app
from msta.config import Config, ConfigError, load_config


def count_parameters(cfg: Config) -> dict[str, Any]:
    """Trainable and total parameters of the model a configuration builds (random backbone
    weights: counting needs no checkpoint)."""
    from msta.model import build_model

    cfg = cfg.with_overrides(["model.pretrained=none"])
    model = build_model(cfg)
    trainable, total = model.num_parameters()
    return {
        "backbone": model.backbone.name,
        "trainable": trainable,
        "total": total,
        "share": trainable / total if total else 0.0,
    }


def _fail(message: str, code: int = 2) -> None:
    print(f"Error: {message}", file=sys.stderr)
    raise typer.Exit(code)


@app.command("params")
def params_command(
    config: list[str] = typer.Option(
        [], "--config", "-c", help="YAML config file or preset name (repeatable, merged in order)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a key: --set adapter.dim=128 (repeatable)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object (trainable, total, share)."),
) -> None:
    """Print the trainable and total parameter counts of the model a configuration builds."""
    from msta.backbone import BackboneError

    try:
        cfg = load_config(config, overrides)
        result = count_parameters(cfg)
    except (ConfigError, BackboneError) as exc:
        _fail(str(exc))
        return
    if as_json:
        print(json.dumps(result))
        return
    print(
        f"{result['backbone']}: trainable {result['trainable']:,} / total {result['total']:,} "
        f"({100 * result['share']:.2f}% trainable)"
    )
