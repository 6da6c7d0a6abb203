"""Aggregate finished runs the way the literature reports them and compare with published numbers.

A run directory holds ``config.yaml`` (the resolved configuration), ``train_summary.json`` (written
when training ends), ``eval_*.json`` (``msta eval``: one file per checkpoint and evaluation) and,
when the run belongs to a sweep, ``sweep.json`` (its protocol, dataset, shots and seed). Runs are
grouped by protocol, dataset, shot count and every other training setting except the seed:

* base-to-novel: mean base and mean novel top-1 over the seeds and the harmonic mean OF THOSE MEANS
  (each seed's own HM is listed too);
* zero-shot: top-1 mean ± std over the evaluation splits of each target dataset;
* few-shot, fully supervised and anything else: mean ± std over the seeds of every metric
  (top-1 / top-5 at the configured views, other views as ``top1@CxV``).

Runs that are missing, unfinished or not evaluated are listed, never averaged. Values are in percent.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from descgen.fileio import write_text_atomic
from msta.errors import MstaError
from msta.run import CONFIG_FILE, SUMMARY_FILE

PUBLISHED_FILE = Path(__file__).resolve().parent / "published.toml"
SWEEP_FILE = "sweep.json"
CHECKPOINTS = ("last", "best")
_NOT_GROUPS = ("val", "splits")
# Settings that do not change what is trained (paths of this machine, logging, the seed).
_IGNORED = {
    "run": ("out", "seed", "device", "tensorboard", "log_every_steps", "save_every_steps"),
    "data": ("num_workers", "root", "data_dir"),
    "descriptions": ("cache",),
}


class ReportError(MstaError):
    """Nothing to report, or a run directory that cannot be read."""


@dataclass
class RunResult:
    run_dir: str
    status: str  # done, unfinished, not evaluated, missing
    protocol: str = ""
    dataset: str = ""
    shots: int | None = None
    seed: int | None = None
    backbone: str = ""
    key: str = ""  # hash of the training settings other than the seed
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # checkpoint -> name -> %


# --------------------------------------------------------------------------- reading runs


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run directories: each path itself when it holds a run or does not exist (a missing run),
    else every run below it (a sweep's output)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir() or (p / CONFIG_FILE).is_file() or (p / SWEEP_FILE).is_file():
            out.append(p)
            continue
        found = sorted({c.parent for c in p.rglob(CONFIG_FILE)} | {c.parent for c in p.rglob(SWEEP_FILE)})
        out.extend(found or [p])
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReportError(f"cannot read {path}: {exc}") from None


def read_run(run_dir: str | Path) -> RunResult:
    """What a run directory holds, reduced to its identity and metrics."""
    d = Path(run_dir)
    meta = _read_json(d / SWEEP_FILE) if (d / SWEEP_FILE).is_file() else {}
    if not (d / CONFIG_FILE).is_file():
        res = RunResult(str(d), "unfinished" if meta else "missing")
        _apply_meta(res, meta)
        return res
    cfg = yaml.safe_load((d / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    evals = [_read_json(p) for p in sorted(d.glob("eval_*.json"), key=lambda p: p.stat().st_mtime)]
    res = RunResult(
        str(d), "done", key=config_key(cfg), backbone=str(cfg.get("model", {}).get("backbone", ""))
    )
    res.protocol, res.dataset, res.shots, res.seed = infer_identity(cfg, evals)
    _apply_meta(res, meta)
    if not (d / SUMMARY_FILE).is_file():
        res.status = "unfinished"
    elif not evals:
        res.status = "not evaluated"
    else:
        views = str(cfg.get("eval", {}).get("views", "1x1"))
        for e in evals:
            res.metrics.setdefault(e.get("checkpoint", "last"), {}).update(eval_metrics(e, views))
    return res


def _apply_meta(res: RunResult, meta: dict[str, Any]) -> None:
    for k in ("protocol", "dataset", "shots", "seed"):
        if meta.get(k) is not None:
            setattr(res, k, meta[k])


def infer_identity(
    cfg: dict[str, Any], evals: list[dict[str, Any]]
) -> tuple[str, str, int | None, int | None]:
    """(protocol, dataset, shots, seed) of a run from its configuration and evaluations."""
    data, run = cfg.get("data", {}), cfg.get("run", {})
    train_list = str(data.get("train_list") or "")
    seed = run.get("seed")
    classes = str(data.get("classes") or "")
    dataset = (
        classes if re.fullmatch(r"[\w-]+", classes) else (Path(str(data.get("root") or "")).name or "custom")
    )
    shots = None
    if data.get("novel_classes") and cfg.get("eval", {}).get("novel_list"):
        protocol = "base2novel"
        m = re.search(r"_s(\d+)_", train_list)
        seed = int(m.group(1)) if m else seed
    elif m := re.search(r"few_shot_(\d+)", train_list):
        protocol, shots = "fewshot", int(m.group(1))
    elif any(g not in _NOT_GROUPS for e in evals for g in e.get("groups", {})):
        protocol = "zeroshot"
    elif classes == "k400":
        protocol = "supervised"
    else:
        protocol = "custom"
    return protocol, dataset, shots, seed


def config_key(cfg: dict[str, Any]) -> str:
    """A short hash of the training settings, the seed and machine-specific paths left out."""
    c = json.loads(json.dumps(cfg, default=str))
    for sec, keys in _IGNORED.items():
        for k in keys:
            c.get(sec, {}).pop(k, None)
    data = c.get("data", {})
    if data.get("train_list"):
        data["train_list"] = re.sub(r"_s\d+_", "_s*_", str(data["train_list"]))
    return hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:8]


def eval_metrics(e: dict[str, Any], configured_views: str) -> dict[str, float]:
    """One evaluation file's metrics in percent (views other than the configured ones get a suffix)."""
    sfx = "" if str(e.get("views", configured_views)) == configured_views else f"@{e['views']}"
    out: dict[str, float] = {}
    if "base_to_novel" in e:
        for k in ("base", "novel", "hm"):
            out[k + sfx] = 100 * e["base_to_novel"][k]
    zs = {g: v for g, v in e.get("groups", {}).items() if g not in _NOT_GROUPS}
    for g, v in zs.items():
        out[f"{g}{sfx}"] = 100 * v["top1"]["mean"]
        out[f"{g}_split_std{sfx}"] = 100 * v["top1"]["std"]
    if not zs:
        for k in ("top1", "top5"):
            if e.get(k) is not None:
                out[k + sfx] = 100 * e[k]
    return out


# --------------------------------------------------------------------------- aggregation


def harmonic_mean(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def mean_std(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
        "values": list(values),
    }


def group_label(r: RunResult) -> str:
    label = f"{r.protocol} {r.dataset}"
    return label + (f" K={r.shots}" if r.shots is not None else "")


def aggregate(runs: list[RunResult]) -> dict[str, Any]:
    """Groups of runs that differ only in the seed, each with mean ± std of every metric per
    checkpoint, and the runs that could not be included."""
    buckets: dict[tuple, list[RunResult]] = {}
    for r in runs:
        if r.status != "missing":
            buckets.setdefault((r.protocol, r.dataset, r.shots, r.key), []).append(r)
    labels = [group_label(rs[0]) for rs in buckets.values()]
    groups = []
    for rs in buckets.values():
        label = group_label(rs[0])
        if labels.count(label) > 1:
            label += f" [{rs[0].key}]"
        groups.append(_group(label, rs))
    excluded = [
        {"run_dir": r.run_dir, "status": r.status, "group": group_label(r)}
        for r in runs
        if r.status != "done"
    ]
    return {"groups": groups, "excluded": excluded}


def _group(label: str, rs: list[RunResult]) -> dict[str, Any]:
    done = [r for r in rs if r.status == "done"]
    first = rs[0]
    g: dict[str, Any] = {
        "label": label,
        "protocol": first.protocol,
        "dataset": first.dataset,
        "shots": first.shots,
        "backbone": first.backbone,
        "key": first.key,
        "seeds": [r.seed for r in done],
        "runs": [r.run_dir for r in done],
        "incomplete": [f"{r.run_dir} ({r.status})" for r in rs if r.status != "done"],
        "checkpoints": {},
    }
    for which in CHECKPOINTS:
        per_run = [r.metrics.get(which, {}) for r in done]
        names = sorted({k for m in per_run for k in m})
        stats = {k: mean_std([m[k] for m in per_run if k in m]) for k in names}
        if "base" in stats and "novel" in stats:
            stats["hm_of_means"] = {"mean": harmonic_mean(stats["base"]["mean"], stats["novel"]["mean"])}
        if stats:
            g["checkpoints"][which] = stats
    return g


# --------------------------------------------------------------------------- published numbers


def load_published(path: str | Path = PUBLISHED_FILE) -> list[dict[str, Any]]:
    """Published results as flat rows: method, backbone, protocol, dataset, shots, metric, value, source."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    sources = data.get("sources", {})
    rows = []
    for entry in data.get("result", []):
        for dataset, value in entry["values"].items():
            pairs = zip(entry["shots"], value, strict=True) if "shots" in entry else [(None, value)]
            for shots, v in pairs:
                rows.append(
                    {
                        "method": entry["method"],
                        "backbone": entry["backbone"],
                        "protocol": entry["protocol"],
                        "dataset": dataset,
                        "shots": shots,
                        "metric": entry["metric"],
                        "value": float(v),
                        "source": sources.get(entry["source"], entry["source"]),
                    }
                )
    return rows


def _headlines(g: dict[str, Any], stats: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(our metric name, published metric, published dataset, our statistics) to compare."""
    if g["protocol"] == "base2novel" and "hm_of_means" in stats:
        return [("HM of means", "hm", g["dataset"], stats["hm_of_means"])]
    if g["protocol"] == "zeroshot":
        return [
            (f"{k} top-1", "top1", k, {**v, "split_std": stats.get(f"{k}_split_std", {}).get("mean")})
            for k, v in stats.items()
            if f"{k}_split_std" in stats
        ]
    return [(f"{m} ({g['dataset']})", m, g["dataset"], stats[m]) for m in ("top1", "top5") if m in stats]


def compare(groups: list[dict[str, Any]], published: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group, checkpoint and headline metric, with each matching published number and
    our difference to it."""
    rows = []
    for g in groups:
        for which, stats in g["checkpoints"].items():
            for name, metric, dataset, ours in _headlines(g, stats):
                pubs = [
                    {**p, "diff": ours["mean"] - p["value"]}
                    for p in published
                    if (p["protocol"], p["dataset"], p["metric"], p["shots"])
                    == (g["protocol"], dataset, metric, g["shots"])
                ]
                rows.append(
                    {
                        "group": g["label"],
                        "checkpoint": which,
                        "metric": name,
                        "mean": ours["mean"],
                        "std": ours.get("std"),
                        "split_std": ours.get("split_std"),
                        "n": ours.get("n", len(g["runs"])),
                        "backbone": g["backbone"],
                        "published": pubs,
                    }
                )
    return rows


# --------------------------------------------------------------------------- the report


def build_report(paths: list[str | Path], published_file: str | Path = PUBLISHED_FILE) -> dict[str, Any]:
    """Read the runs under ``paths``, aggregate them and compare with the published numbers."""
    if not paths:
        raise ReportError("no run directories given")
    runs = [read_run(p) for p in find_runs(list(paths))]
    agg = aggregate(runs)
    return {
        "units": "percent",
        "runs": [asdict(r) for r in runs],
        "groups": agg["groups"],
        "excluded": agg["excluded"],
        "comparison": compare(agg["groups"], load_published(published_file)),
    }


def _fmt(stat: dict[str, Any] | None, key: str = "mean") -> str:
    if not stat:
        return "-"
    s = f"{stat[key]:.2f}"
    return s + (f" ± {stat['std']:.2f}" if stat.get("n", 1) > 1 else "")


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: comparison with published numbers, every group, excluded runs."""
    lines = [
        "# MSTA results",
        "",
        "Top-1 / top-5 in %, mean ± std over seeds (zero-shot: ± std over splits).",
        "",
    ]
    lines += ["## Compared with published numbers", ""]
    lines += ["| group | ckpt | metric | ours | n | backbone | published (method, backbone) | diff |"]
    lines += ["|---|---|---|---|---|---|---|---|"]
    for row in report["comparison"]:
        std = row["split_std"] if row.get("split_std") is not None else row.get("std")
        ours = f"{row['mean']:.2f}" + (f" ± {std:.2f}" if std else "")
        pubs = row["published"] or [None]
        for p in pubs:
            pub = f"{p['value']:.1f} ({p['method']}, {p['backbone']})" if p else "-"
            diff = f"{p['diff']:+.2f}" if p else "-"
            lines.append(
                f"| {row['group']} | {row['checkpoint']} | {row['metric']} | {ours} | {row['n']} "
                f"| {row['backbone']} | {pub} | {diff} |"
            )
    lines += ["", "## Groups", ""]
    for g in report["groups"]:
        lines.append(f"### {g['label']} (seeds {g['seeds']}, backbone {g['backbone']}, settings {g['key']})")
        for which, stats in g["checkpoints"].items():
            cells = ", ".join(f"{k} {_fmt(v)}" for k, v in stats.items())
            lines.append(f"* {which}: {cells}")
        if "base" in g["checkpoints"].get("last", {}):
            per_seed = g["checkpoints"]["last"]["hm"]["values"]
            lines.append(f"* last, HM of each seed: {', '.join(f'{v:.2f}' for v in per_seed)}")
        lines += [f"* not included: {x}" for x in g["incomplete"]]
        lines.append("")
    if report["excluded"]:
        lines += ["## Missing or unfinished runs (not averaged)", ""]
        lines += [f"* {x['run_dir']}: {x['status']}" for x in report["excluded"]]
    sources = sorted({p["source"] for row in report["comparison"] for p in row["published"]})
    if sources:
        lines += ["", "## Sources", ""] + [f"* {s}" for s in sources]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str | Path) -> Path | None:
    """A bar chart of our headline numbers (last checkpoint) next to the published ones."""
    rows = [r for r in report["comparison"] if r["checkpoint"] == "last"]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({p["method"] for r in rows for p in r["published"]})
    width = 0.8 / (1 + len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(rows)), 4))
    xs = range(len(rows))
    ax.bar([x for x in xs], [r["mean"] for r in rows], width, label="this run (mean)")
    for i, m in enumerate(methods, start=1):
        vals = [next((p["value"] for p in r["published"] if p["method"] == m), 0.0) for r in rows]
        ax.bar([x + i * width for x in xs], vals, width, label=f"{m} (published)")
    ax.set_xticks([x + 0.4 - width / 2 for x in xs])
    ax.set_xticklabels([f"{r['group']}\n{r['metric']}" for r in rows], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("%")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """``report.md``, ``report.json`` and ``report.png`` (when there is something to plot) in ``out``."""
    out = Path(out)
    files = {"markdown": out / "report.md", "json": out / "report.json"}
    write_text_atomic(files["markdown"], markdown(report))  # a failure: OutputPathError, a user error
    write_text_atomic(files["json"], json.dumps(report, indent=1))
    png = plot(report, out / "report.png")
    if png:
        files["png"] = png
    return files
