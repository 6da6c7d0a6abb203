"""Plots of a run: the confusion matrix of a split and the training curve (PNG, matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from msta.run import read_metrics


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
