"""Evaluation: top-1 / top-5, per-class accuracy, confusion matrix, multi-view, base-to-novel, splits.

The class text features are computed for each evaluated class set, from the class names of that
set, right before its videos are scored; nothing is cached across class sets. Multi-view scores sum
the softmax over the views (clips x crops) of each video.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from msta import checkpoint as ckpt
from msta.config import Config, load_config
from msta.train import (
    CONFIG_FILE,
    TrainError,
    autocast,
    build_seeded_model,
    check_labels,
    class_names,
    expand,
    make_dataset,
    parse_views,
    read_list,
    read_metrics,
    train_classes_spec,
)


@dataclass
class SplitSpec:
    name: str
    list: str
    classes: str | None  # class-list spec (None: data.classes)
    root: str | None = None
    group: str | None = None


def evaluate_split(
    model,
    dataset,
    names: Sequence[str],
    env=None,
    batch_size: int = 16,
    num_workers: int = 0,
    progress: Any = None,
    confusion: bool = True,
) -> dict[str, Any]:
    """Score every video of ``dataset`` against ``names``; the same result on every rank."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from msta import distributed as D

    env = env or D.DistEnv(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    num_classes = len(names)
    k = min(5, num_classes)
    rows: list[tuple[int, int, list[int]]] = []  # (index, label, top-k predictions)
    conf = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    skipped = 0
    try:
        with torch.no_grad(), autocast(env.device):
            text = model.encode_class_prompts(list(names))  # recomputed for this class set
            indices = D.shard_indices(len(dataset), env)
            loader = DataLoader(
                Subset(dataset, indices),
                batch_size=batch_size,
                shuffle=False,
                num_workers=num_workers,
                pin_memory=env.device.type == "cuda",
                generator=torch.Generator().manual_seed(0),
            )
            for batch in loader:
                video = batch["video"].to(env.device, non_blocking=True)
                labels = batch["label"]
                if video.dim() == 6:  # [B, V, T, C, H, W]: several views per video
                    b, v = video.shape[:2]
                    logits = model(video.flatten(0, 1), text).float().view(b, v, -1)
                    scores = logits.softmax(-1).sum(1)
                else:
                    scores = model(video, text).float().softmax(-1)
                top = scores.topk(k, dim=-1).indices.cpu()
                for idx, lab, t in zip(batch["index"].tolist(), labels.tolist(), top.tolist(), strict=True):
                    rows.append((int(idx), int(lab), t))
                    conf[int(lab), t[0]] += 1
                if "skipped" in batch:
                    skipped += int(torch.as_tensor(batch["skipped"]).sum().item())
                if progress is not None:
                    progress(len(labels))
    finally:
        model.train(was_training)
    gathered = D.gather_objects(env, (rows, conf if confusion else None, skipped))
    all_rows = [r for g in gathered for r in g[0]]
    if confusion:
        conf = sum((g[1] for g in gathered), torch.zeros_like(conf))
    skipped = sum(g[2] for g in gathered)
    return summarize(all_rows, names, conf if confusion else None, skipped)


def summarize(
    rows: list[tuple[int, int, list[int]]], names: Sequence[str], conf, skipped: int = 0
) -> dict[str, Any]:
    n = len(rows)
    top1 = sum(1 for _, lab, t in rows if t[0] == lab)
    top5 = sum(1 for _, lab, t in rows if lab in t[:5])
    per_class: dict[str, float | None] = {}
    counts = [0] * len(names)
    hits = [0] * len(names)
    for _, lab, t in rows:
        counts[lab] += 1
        hits[lab] += int(t[0] == lab)
    for i, name in enumerate(names):
        per_class[name] = hits[i] / counts[i] if counts[i] else None
    present = [v for v in per_class.values() if v is not None]
    return {
        "n": n,
        "top1": top1 / n if n else 0.0,
        "top5": top5 / n if n else 0.0,
        "mean_class_accuracy": sum(present) / len(present) if present else 0.0,
        "per_class": per_class,
        "skipped": skipped,
        "confusion": conf.tolist() if conf is not None else None,
    }


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def mean_std(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values) if values else 0.0,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


# --------------------------------------------------------------------------- a run


def run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> Config:
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise TrainError(f"{run_dir} is not a training run ({CONFIG_FILE} not found)")
    return load_config([p], overrides)


def configured_splits(cfg: Config) -> list[SplitSpec]:
    """The splits a run is evaluated on by default: the validation list (``base`` when the run has
    novel classes), the novel list, extra ``data.val_lists`` and ``eval.splits``."""
    out: list[SplitSpec] = []
    novel = cfg.data.novel_classes and cfg.eval.novel_list
    extra = list(cfg.data.val_lists)
    if cfg.data.val_list:
        group = "val" if extra else None
        out.append(
            SplitSpec("base" if novel else "val", cfg.data.val_list, train_classes_spec(cfg), group=group)
        )
    if novel:
        out.append(SplitSpec("novel", cfg.eval.novel_list, cfg.data.novel_classes))
    for i, lst in enumerate(extra, start=2 if cfg.data.val_list else 1):
        out.append(SplitSpec(f"val{i}", lst, train_classes_spec(cfg), group="val"))
    for s in cfg.eval.splits:
        out.append(SplitSpec(s.name, s.list, s.classes or cfg.data.classes, s.root, s.group))
    return out


def target_splits(cfg: Config, target: str, root: str | None) -> list[SplitSpec]:
    """The evaluation splits of a dataset preset (``hmdb51``, ``k600``...), paths resolved."""
    from msta.config import ConfigError

    over = [f"data.data_dir={cfg.data.data_dir}"] if cfg.data.data_dir else []
    try:
        tcfg = load_config([target], over)
    except ConfigError as exc:
        raise TrainError(f"--target {target}: {exc}") from None
    if root is None:
        raise TrainError(f"--target {target} needs --root, the directory that holds its videos")
    out = [
        SplitSpec(s.name, expand(s.list, tcfg), expand(s.classes or tcfg.data.classes, tcfg), root, s.group)
        for s in tcfg.eval.zeroshot
    ]
    if not out and tcfg.data.val_list:
        out = [SplitSpec("val", expand(tcfg.data.val_list, tcfg), expand(tcfg.data.classes, tcfg), root)]
    if not out:
        raise TrainError(f"preset {target} names no evaluation list (eval.zeroshot or data.val_list)")
    return out


def load_run_model(run_dir: str | Path, cfg: Config, which: str, device):
    model = build_seeded_model(cfg)
    try:
        weights, info = ckpt.load_weights(run_dir, which)
    except ckpt.CheckpointError as exc:
        raise TrainError(str(exc)) from None
    model.load_trainable_state_dict(weights)
    model.to(device)
    model.eval()
    return model, info


def evaluate_run(
    run_dir: str | Path,
    splits: Sequence[str] = (),
    views: str | None = None,
    checkpoint: str = "last",
    classes: str | None = None,
    root: str | None = None,
    overrides: Sequence[str] = (),
    plots: bool = True,
    progress: bool = True,
    target: str | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint(s) and write ``eval_{checkpoint}.json`` and the plots.

    ``checkpoint``: ``last``, ``best`` or ``both``. ``splits``: video lists to evaluate instead of the
    configured ones (labels index ``classes``, default ``data.classes``); several are averaged
    (mean and standard deviation). ``target``: a dataset preset whose zero-shot splits
    (``eval.zeroshot``, else its validation list) are evaluated, with videos under ``root``.
    """
    import torch

    from msta import distributed as D

    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    env = D.setup(cfg.run.device)
    try:
        if target:
            if splits:
                raise TrainError("give either --target or --split, not both")
            specs = target_splits(cfg, target, root)
        elif splits:
            specs = [
                SplitSpec(
                    Path(s).stem if len(splits) > 1 else "val",
                    s,
                    classes or cfg.data.classes,
                    root,
                    group="splits",
                )
                for s in splits
            ]
            if len(splits) == 1:
                specs[0].group = None
            # Unique names when two lists share a stem.
            seen: dict[str, int] = {}
            for sp in specs:
                seen[sp.name] = seen.get(sp.name, 0) + 1
                if seen[sp.name] > 1:
                    sp.name = f"{sp.name}_{seen[sp.name]}"
        else:
            specs = configured_splits(cfg)
        if not specs:
            raise TrainError("nothing to evaluate: the run has no data.val_list; pass --split LIST")
        view_str = views or cfg.eval.views
        vc = parse_views(view_str)
        which_list = ["last", "best"] if checkpoint == "both" else [checkpoint]
        if checkpoint not in ("last", "best", "both"):
            raise TrainError(f"--checkpoint must be last, best or both, not {checkpoint!r}")
        # Resolve every class set and list first, so that a bad file fails before any scoring.
        prepared = []
        for sp in specs:
            names = class_names(sp.classes, cfg)
            items = read_list(sp.list, cfg, f"video list of split {sp.name!r}")
            check_labels(items, len(names), f"split {sp.name!r} ({expand(sp.list, cfg)})")
            prepared.append((sp, names, items))

        results: dict[str, Any] = {}
        for which in which_list:
            model, info = load_run_model(run_dir, cfg, which, env.device)
            bs = cfg.eval.batch_size or max(1, cfg.optim.batch_size // max(1, vc[0] * vc[1]))
            out_splits: dict[str, Any] = {}
            for sp, names, items in prepared:
                ds = make_dataset(
                    cfg,
                    items,
                    train=False,
                    image_size=model.image_size,
                    views=vc,
                    root=sp.root,
                    stats=model.input_stats,
                )
                res = evaluate_split(model, ds, names, env, batch_size=bs, num_workers=cfg.data.num_workers)
                res["list"] = expand(sp.list, cfg)
                res["classes"] = list(names)
                res["group"] = sp.group
                out_splits[sp.name] = res
                if env.is_main:
                    _console().print(
                        f"[{which}] {sp.name}: top-1 {res['top1']:.4f}, top-5 {res['top5']:.4f} "
                        f"({res['n']} videos, {len(names)} classes)",
                        highlight=False,
                        markup=False,
                        soft_wrap=True,
                    )
            results[which] = _assemble(which, info, out_splits, view_str)
            del model
            if env.device.type == "cuda":
                torch.cuda.empty_cache()
        report = (
            results[which_list[0]]
            if len(which_list) == 1
            else {
                **results["last"],
                "checkpoints": results,
            }
        )
        if env.is_main:
            for which, res in results.items():
                _write_json(run_dir / f"eval_{which}.json", res)
            if plots:
                first = next(iter(results.values()))
                for name, sp in first["splits"].items():
                    if sp.get("confusion") is not None:
                        plot_confusion(
                            sp["confusion"],
                            sp["classes"],
                            run_dir / f"confusion_{name}.png",
                            title=f"{name} ({first['checkpoint']})",
                        )
                plot_training_curve(run_dir, run_dir / "training_curve.png")
        return report
    finally:
        D.cleanup(env)


def _assemble(which: str, info: dict[str, Any], splits: dict[str, Any], views: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "checkpoint": which,
        "epoch": info.get("epoch"),
        "global_step": info.get("global_step"),
        "views": views,
        "splits": splits,
    }
    groups: dict[str, list[str]] = {}
    for name, res in splits.items():
        if res.get("group"):
            groups.setdefault(res["group"], []).append(name)
    out["groups"] = {
        g: {
            "splits": members,
            "top1": mean_std([splits[m]["top1"] for m in members]),
            "top5": mean_std([splits[m]["top5"] for m in members]),
        }
        for g, members in groups.items()
    }
    if "base" in splits and "novel" in splits:
        b, n = splits["base"]["top1"], splits["novel"]["top1"]
        out["base_to_novel"] = {"base": b, "novel": n, "hm": harmonic_mean(b, n)}
    first = next(iter(splits.values()))
    if first.get("group") and first["group"] in out["groups"]:
        g = out["groups"][first["group"]]
        out["top1"], out["top5"] = g["top1"]["mean"], g["top5"]["mean"]
        out["top1_std"], out["top5_std"] = g["top1"]["std"], g["top5"]["std"]
    else:
        out["top1"], out["top5"] = first["top1"], first["top5"]
    return out


def _write_json(path: Path, obj: Any) -> None:
    ckpt.atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False))


def _console():
    from rich.console import Console

    return Console(stderr=True)


def compact(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the bulky per-split confusion matrices (for printing)."""

    def strip(r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        r["splits"] = {
            k: {kk: vv for kk, vv in v.items() if kk not in ("confusion", "classes")}
            for k, v in r["splits"].items()
        }
        if "checkpoints" in r:
            r["checkpoints"] = {k: strip(v) for k, v in r["checkpoints"].items()}
        return r

    return strip(report)


# --------------------------------------------------------------------------- plots


def plot_confusion(conf: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    m = np.asarray(conf, dtype=np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    c = len(names)
    labelled = c <= 60
    margin = min(4.0, 0.07 * max((len(n) for n in names), default=0)) if labelled else 0.0
    side = min(20.0, max(4.0, 0.3 * c))
    fig, ax = plt.subplots(figsize=(side + margin + 1.5, side + margin + 0.8))
    im = ax.imshow(norm, vmin=0.0, vmax=1.0, cmap="viridis")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if labelled:
        size = max(5, 9 - c // 10)
        ax.set_xticks(range(c))
        ax.set_yticks(range(c))
        ax.set_xticklabels(names, rotation=90, fontsize=size)
        ax.set_yticklabels(names, fontsize=size)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=8,
                            color="black" if norm[i, j] > 0.5 else "white")  # fmt: skip
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix {title}".strip(), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_training_curve(run_dir: Path, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    train = [r for r in rows if r.get("type") == "train" and "loss" in r]
    val = [r for r in rows if r.get("type") == "val"]
    if not train and not val:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        steps = [r["global_step"] for r in train]
        ax[0].plot(steps, [r["loss"] for r in train], label="loss")
        if all("ce" in r for r in train):
            ax[0].plot(steps, [r["ce"] for r in train], label="cross-entropy")
        if all("cc" in r for r in train) and any(r["cc"] for r in train):
            ax[0].plot(steps, [r["cc"] for r in train], label="consistency")
        ax[0].set_xlabel("optimizer step")
        ax[0].set_title("training loss")
        ax[0].legend()
    if val:
        ax[1].plot([r["epoch"] for r in val], [r["top1"] for r in val], marker="o", label="val top-1")
        ax[1].plot([r["epoch"] for r in val], [r["top5"] for r in val], marker="o", label="val top-5")
        ax[1].set_ylim(0, 1.02)
        ax[1].set_xlabel("epoch")
        ax[1].legend()
    if train and all("acc" in r for r in train):
        ax[1].plot(
            [
                r["global_step"] * (val[-1]["epoch"] / max(1, val[-1]["global_step"])) if val else r["epoch"]
                for r in train
            ],
            [r["acc"] for r in train],
            alpha=0.5,
            label="train top-1",
        )
        ax[1].legend()
    ax[1].set_title("accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
