"""``msta params``: trainable and total parameter counts for a configuration (registered by
:mod:`msta.cli`; user errors are raised)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # the config models (pydantic) load only when a command runs
    from msta.config import Config


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
    from msta.config import load_config

    result = count_parameters(load_config(config, overrides))
    if as_json:
        print(json.dumps(result))
        return
    print(
        f"{result['backbone']}: trainable {result['trainable']:,} / total {result['total']:,} "
        f"({100 * result['share']:.2f}% trainable)"
    )
