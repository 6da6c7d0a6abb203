"""Classify one video: zero-shot with the frozen backbone, or with a trained run's adapters."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msta.config import Config, load_config
from msta.run import (
    TrainError,
    autocast,
    build_seeded_model,
    class_names,
    load_run_model,
    make_dataset,
    pick_device,
    run_config,
)
from msta.views import parse_views


def parse_class_option(classes: str | None, classes_file: str | None, cfg: Config) -> list[str]:
    """``--classes "a,b,c"`` or ``--classes-file FILE`` (any class-list format, or a dataset name)."""
    if bool(classes) == bool(classes_file):
        raise TrainError(
            'give the candidate classes with exactly one of --classes "a,b,c" or --classes-file FILE'
        )
    if classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if len(names) < 2:
            raise TrainError("--classes needs at least two comma-separated class names")
        if len(set(names)) != len(names):
            raise TrainError("--classes lists a class twice")
        return names
    return class_names(classes_file, cfg)


def predict(
    video: str | Path,
    classes: str | None = None,
    classes_file: str | None = None,
    run: str | Path | None = None,
    configs: Sequence[str] = (),
    overrides: Sequence[str] = (),
    topk: int = 5,
    checkpoint: str = "last",
    views: str = "1x1",
) -> dict[str, Any]:
    """Top-k classes with probabilities for one video file (or folder of frames).

    With ``run``: the run's configuration and trained adapters (``checkpoint``: last or best).
    Without: the backbone of ``configs``/``overrides`` with the adapters switched off (zero-shot).
    """
    path = Path(video).expanduser()
    if not path.exists():
        raise TrainError(f"video not found: {path}")
    if topk < 1:
        raise TrainError("--topk must be at least 1")
    if run is not None:
        cfg = run_config(run, overrides)
        mode = f"run {run} ({checkpoint} checkpoint)"
    else:
        cfg = load_config(configs, [*overrides, "adapter.branches=none"])
        mode = "zero-shot"
    names = parse_class_option(classes, classes_file, cfg)
    device = pick_device(cfg.run.device)
    if run is not None:
        model, info = load_run_model(run, cfg, checkpoint, device)
        mode += f", epoch {info.get('epoch')}, step {info.get('global_step')}"
    else:
        model = build_seeded_model(cfg).to(device).eval()
    probs = class_probabilities(model, cfg, path, names, parse_views(views), device)
    k = min(topk, len(names))
    p, idx = probs.topk(k)
    return {
        "video": str(path),
        "mode": mode,
        "views": views,
        "predictions": [
            {"class": names[i], "probability": float(q)}
            for q, i in zip(p.tolist(), idx.tolist(), strict=True)
        ],
    }


def class_probabilities(model, cfg: Config, path: Path, names: Sequence[str], views: tuple[int, int], device):
    """Softmax over ``names`` for one video (the mean over its views)."""
    import torch

    from msta.evaluate import video_scores
    from msta.transforms import batch_video
    from msta.video import DataError, VideoReadError, open_reader

    try:  # a video that cannot be opened at all: one line, before the dataset's retry and warning
        with open_reader(path, cfg.data.decoder) as reader:
            if reader.num_frames < 1:
                raise VideoReadError(f"{path} has no frames")
    except VideoReadError as exc:
        raise TrainError(f"cannot read the video {path}: {exc}") from None
    try:
        ds = make_dataset(
            cfg,
            [(path.name, 0)],
            train=False,
            image_size=model.image_size,
            views=views,
            root=str(path.parent),
            max_retries=0,
            stats=model.input_stats,
        )
        sample = ds[0]
    except DataError as exc:
        raise TrainError(f"cannot read {path}: {exc}") from None
    x = batch_video(sample, device).unsqueeze(0)
    with torch.no_grad(), autocast(device, cfg.run.precision):
        text = model.encode_class_prompts(list(names))
        views_of_video = x.shape[1] if x.dim() == 6 else 1
        return video_scores(model, x, text)[0] / views_of_video  # the views' mean: probabilities
