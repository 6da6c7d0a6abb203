"""Evaluation: top-1 / top-5, per-class accuracy, confusion matrix, multi-view, base-to-novel, splits.

The class text features are computed for each evaluated class set, from the class names of that
set (``--classifier names``) or from them and their descriptions (``--classifier descriptions``,
see :mod:`msta.classifier`), right before its videos are scored; nothing is cached across class
sets. Without a run (``zero-shot``), the backbone of a configuration is scored with its adapters off. Multi-view scores sum
the softmax over the views (clips x crops) of each video. The forward passes run in the precision
of the configuration (``run.precision``, see :func:`msta.run.autocast`): a run trained in fp32 is
scored in fp32.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from descgen.fileio import write_text_atomic
from msta.classifier import ClassifierSpec, class_weights
from msta.config import Config, ConfigError, load_config
from msta.plots import plot_confusion, plot_training_curve
from msta.report import harmonic_mean
from msta.run import (
    TrainError,
    autocast,
    build_seeded_model,
    check_labels,
    class_names,
    expand,
    load_run_model,
    make_dataset,
    read_list,
    run_config,
    train_classes_spec,
)
from msta.transforms import batch_video
from msta.views import parse_views


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
    text=None,
    *,
    precision: str,
) -> dict[str, Any]:
    """Score every video of ``dataset`` against ``names``; the same result on every rank.
    ``text``: the class weights ``[C, D]`` (default: the class-prompt embeddings of ``names``).
    ``precision``: the run's ``run.precision`` (see :func:`msta.run.autocast`)."""
    import torch
    from torch.utils.data import DataLoader, Subset

    from msta import distributed as D

    env = env or D.DistEnv(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    num_classes = len(names)
    rows: list[tuple[int, int, list[int]]] = []  # (index, label, top-k predictions)
    conf = torch.zeros((num_classes, num_classes), dtype=torch.int64)
    skipped = 0
    try:
        with torch.no_grad(), autocast(env.device, precision):
            if text is None:
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
                labels = batch["label"]
                scores = video_scores(model, batch_video(batch, env.device), text)
                new_rows = prediction_rows(scores, labels, batch["index"])
                for _, lab, t in new_rows:
                    conf[lab, t[0]] += 1
                rows += new_rows
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


def video_scores(model, video, text):
    """Class scores per video; several views ([B, V, T, C, H, W]) sum their softmax."""
    if video.dim() == 6:
        b, v = video.shape[:2]
        return view_scores(model(video.flatten(0, 1), text).view(b, v, -1))
    return view_scores(model(video, text))


def view_scores(logits):
    """Class scores from logits ``[N, C]``, or ``[N, V, C]`` for V views per video: the softmax in
    fp32, summed over the views."""
    probs = logits.float().softmax(-1)
    return probs.sum(1) if probs.dim() == 3 else probs


def prediction_rows(scores, labels, indices=None) -> list[tuple[int, int, list[int]]]:
    """``(index, label, top-k class indices)`` per video of ``scores`` ``[N, C]`` (k = min(5, C);
    index: ``indices``, else the position), the rows :func:`summarize` reads."""
    k = min(5, scores.shape[-1])
    top = scores.topk(k, dim=-1).indices.cpu().tolist()
    idx = range(len(top)) if indices is None else indices.tolist()
    return [(int(i), int(lab), t) for i, lab, t in zip(idx, labels.tolist(), top, strict=True)]


def summarize(
    rows: list[tuple[int, int, list[int]]], names: Sequence[str], conf, skipped: int = 0
) -> dict[str, Any]:
    """Top-1, top-5 and per-class accuracy of ``rows`` (see :func:`prediction_rows`); ``conf``: the
    confusion matrix to report, or None."""
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


def mean_std(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values) if values else 0.0,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
    }


# --------------------------------------------------------------------------- a run


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
    classifier: ClassifierSpec | None = None,
) -> dict[str, Any]:
    """Evaluate a run's checkpoint(s) and write ``eval_{checkpoint}.json`` and the plots.

    ``checkpoint``: ``last``, ``best`` or ``both``. ``splits``: video lists to evaluate instead of the
    configured ones (labels index ``classes``, default ``data.classes``); several are averaged
    (mean and standard deviation). ``target``: a dataset preset whose zero-shot splits
    (``eval.zeroshot``, else its validation list) are evaluated, with videos under ``root``.
    ``classifier``: how the class weights are built (default: the class names).
    """
    from msta import distributed as D

    classifier = classifier or ClassifierSpec()
    classifier.check()
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides)
    env = D.setup(cfg.run.device)
    try:
        if checkpoint not in ("last", "best", "both"):
            raise TrainError(f"--checkpoint must be last, best or both, not {checkpoint!r}")
        which_list = ["last", "best"] if checkpoint == "both" else [checkpoint]
        scoring = Scoring.of(cfg, env, resolve_splits(cfg, splits, classes, root, target), views, classifier)
        results = {which: evaluate_checkpoint(run_dir, which, scoring) for which in which_list}
        if env.is_main:
            write_report(run_dir, results, plots)
        return results[which_list[0]] if len(which_list) == 1 else {**results["last"], "checkpoints": results}
    finally:
        D.cleanup(env)


def resolve_splits(
    cfg: Config,
    splits: Sequence[str] = (),
    classes: str | None = None,
    root: str | None = None,
    target: str | None = None,
) -> list[SplitSpec]:
    """The splits to evaluate: a target preset's, the ``--split`` lists, or the configured ones."""
    if target:
        if splits:
            raise TrainError("give either --target or --split, not both")
        specs = target_splits(cfg, target, root)
    elif splits:
        specs = _list_splits(splits, classes or cfg.data.classes, root)
    else:
        specs = configured_splits(cfg)
    if not specs:
        raise TrainError("nothing to evaluate: the run has no data.val_list; pass --split LIST")
    return specs


def _list_splits(splits: Sequence[str], classes: str | None, root: str | None) -> list[SplitSpec]:
    """One split per ``--split`` list: ``val`` alone, else named by file stem (made unique) and
    grouped as ``splits``."""
    if len(splits) == 1:
        return [SplitSpec("val", splits[0], classes, root)]
    specs = [SplitSpec(Path(s).stem, s, classes, root, group="splits") for s in splits]
    seen: dict[str, int] = {}
    for sp in specs:
        seen[sp.name] = seen.get(sp.name, 0) + 1
        if seen[sp.name] > 1:
            sp.name = f"{sp.name}_{seen[sp.name]}"
    return specs


def prepare_splits(cfg: Config, specs: Sequence[SplitSpec]) -> Prepared:
    """Every split's class names and video items, read and checked before any scoring (so that a
    bad file fails early)."""
    prepared = []
    for sp in specs:
        names = class_names(sp.classes, cfg)
        items = read_list(sp.list, cfg, f"video list of split {sp.name!r}")
        check_labels(items, len(names), f"split {sp.name!r} ({expand(sp.list, cfg)})")
        prepared.append((sp, names, items))
    return prepared


Prepared = list[tuple[SplitSpec, list[str], list[Any]]]  # (split, class names, video items)


@dataclass
class Scoring:
    """What scoring a model needs besides the model: the config, the splits (read and checked),
    the device environment, the views and how the class weights are built."""

    cfg: Config
    prepared: Prepared
    env: Any
    view_str: str
    classifier: ClassifierSpec

    @classmethod
    def of(cls, cfg: Config, env: Any, specs: Sequence[SplitSpec], views: str | None, classifier) -> Scoring:
        """Views checked (default ``eval.views``), then every split read, before anything is scored."""
        view_str = views or cfg.eval.views
        parse_views(view_str)
        return cls(cfg, prepare_splits(cfg, specs), env, view_str, classifier)

    @property
    def views(self) -> tuple[int, int]:
        return parse_views(self.view_str)

    def result(self, model, label: str, info: dict[str, Any]) -> dict[str, Any]:
        """``model`` scored on every split, as the report of ``label`` (a checkpoint, or zero-shot)."""
        return _assemble(label, info, self.score(model, label), self.view_str, self.classifier)

    def score(self, model, label: str) -> dict[str, Any]:
        """Every prepared split scored by ``model`` with the class weights of the classifier."""
        cfg, env, views = self.cfg, self.env, self.views
        bs = cfg.eval.batch_size or max(1, cfg.optim.batch_size // max(1, views[0] * views[1]))
        out_splits: dict[str, Any] = {}
        for sp, names, items in self.prepared:
            ds = make_dataset(
                cfg,
                items,
                train=False,
                image_size=model.image_size,
                views=views,
                root=sp.root,
                stats=model.input_stats,
            )
            with autocast(env.device, cfg.run.precision):
                text, weights_info = class_weights(model, names, self.classifier)
            res = evaluate_split(
                model,
                ds,
                names,
                env,
                batch_size=bs,
                num_workers=cfg.data.num_workers,
                text=text,
                precision=cfg.run.precision,
            )
            res["list"] = expand(sp.list, cfg)
            res["classes"] = list(names)
            res["group"] = sp.group
            res["classifier"] = weights_info
            out_splits[sp.name] = res
            if env.is_main:
                _console().print(
                    f"[{label}] {sp.name}: top-1 {res['top1']:.4f}, top-5 {res['top5']:.4f} "
                    f"({res['n']} videos, {len(names)} classes)",
                    highlight=False,
                    markup=False,
                    soft_wrap=True,
                )
        return out_splits


def evaluate_checkpoint(run_dir: Path, which: str, scoring: Scoring) -> dict[str, Any]:
    """Score one checkpoint (``last`` or ``best``) on every prepared split."""
    import torch

    model, info = load_run_model(run_dir, scoring.cfg, which, scoring.env.device)
    result = scoring.result(model, which, info)
    del model
    if scoring.env.device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def evaluate_zero_shot(
    configs: Sequence[str] = (),
    overrides: Sequence[str] = (),
    splits: Sequence[str] = (),
    classes: str | None = None,
    root: str | None = None,
    views: str | None = None,
    target: str | None = None,
    classifier: ClassifierSpec | None = None,
) -> dict[str, Any]:
    """Score the frozen backbone of ``configs`` (adapters off) on ``splits`` or a ``target``
    preset's zero-shot splits; nothing is written."""
    from msta import distributed as D

    classifier = classifier or ClassifierSpec()
    classifier.check()
    cfg = load_config(configs, [*overrides, "adapter.branches=none"])
    if not splits and not target:
        raise TrainError("--zero-shot needs --split LIST (with --classes and --root) or --target")
    env = D.setup(cfg.run.device)
    try:
        scoring = Scoring.of(cfg, env, resolve_splits(cfg, splits, classes, root, target), views, classifier)
        model = build_seeded_model(cfg).to(env.device).eval()
        return scoring.result(model, "zero-shot", {})
    finally:
        D.cleanup(env)


def write_report(run_dir: Path, results: dict[str, dict[str, Any]], plots: bool = True) -> None:
    """``eval_{checkpoint}.json`` per checkpoint; with ``plots``, the confusion matrices of the first
    checkpoint's splits and the training curve."""
    for which, res in results.items():
        _write_json(run_dir / f"eval_{which}.json", res)
    if not plots:
        return
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


def _assemble(
    which: str,
    info: dict[str, Any],
    splits: dict[str, Any],
    views: str,
    classifier: ClassifierSpec | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "checkpoint": which,
        "epoch": info.get("epoch"),
        "global_step": info.get("global_step"),
        "views": views,
        "classifier": (classifier or ClassifierSpec()).to_dict(),
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
    write_text_atomic(path, json.dumps(obj, indent=1, ensure_ascii=False))


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
