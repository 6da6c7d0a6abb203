"""Tests of training, evaluation and prediction. Shared helpers live here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
MSTA = VENV_BIN / "msta"
TORCHRUN = VENV_BIN / "torchrun"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def msta_cmd() -> list[str]:
    """The ``msta`` console script of this environment (or the module, if the script is missing)."""
    if MSTA.is_file():
        return [str(MSTA)]
    return [sys.executable, "-m", "msta.cli"]


def run_msta_process(
    args: Sequence[str], timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """``msta ARGS`` in a child process, as a user runs it (exit status, stderr, no traceback).
    The in-process runner is the ``msta_cli`` fixture."""
    return subprocess.run(
        [*msta_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=subprocess_env(),
        cwd=str(cwd or REPO),
    )


def start_msta_process(args: Sequence[str], stdout: int = subprocess.PIPE) -> subprocess.Popen:
    """``msta ARGS`` started in a child process (stderr piped, text mode) and left running."""
    return subprocess.Popen(
        [*msta_cmd(), *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        env=subprocess_env(),
        cwd=str(REPO),
    )


def make_synth(
    out: Path,
    videos_per_class: int = 4,
    val_per_class: int = 2,
    motions: str = "directions",
    frames: int = 8,
    size: int = 32,
    seed: int = 0,
) -> Path:
    from msta.synth import synth_dataset

    synth_dataset(
        out,
        videos_per_class=videos_per_class,
        val_per_class=val_per_class,
        frames=frames,
        size=size,
        seed=seed,
        motions=motions,
    )
    return out


def class_list(root: Path) -> list[str]:
    from msta.data import load_classes

    return load_classes(root / "classes.csv")


def make_cache(path: Path, classes: Sequence[str], skip: Sequence[str] = (), n: int = 2) -> str:
    """A description cache with ``n`` spatial and ``n`` temporal sentences for every class but
    ``skip``, written through the store's API. Returns the set id."""
    from descgen.store import Store

    prompt = "Describe {cls} in spatial and temporal sentences."
    fp = "0" * 63 + "1"
    with Store(path) as store:
        store.ensure_prompt(fp, "test-prompt", "1", prompt)
        set_ = store.ensure_set("synth", fp, "manual", "handwritten", {"temperature": 0}, n)
        for c in classes:
            if c in skip:
                continue
            spatial = [f"A video about a coloured shape {k} for {c.lower()}." for k in range(n)]
            temporal = [
                f"A video of {c.lower()} generally involves the following step: step {k} of the motion, which is a sub-step."
                for k in range(n)
            ]
            store.record_success(set_, c, spatial, temporal, raw_response=json.dumps({"c": c}))
        return set_.id


def synth_args(root: Path, out: Path, *extra: str) -> list[str]:
    """``msta train`` arguments for a short run on a tiny synthetic dataset."""
    return [
        "train", "--config", "synth", "--no-progress",
        "--set", f"data.root={root}", "--set", f"run.out={out}",
        *extra,
    ]  # fmt: skip
