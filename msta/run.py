"""What training, evaluation and prediction share: the run directory's files, class lists, video
lists, the dataset factory, the resolved configuration, devices, seeding and the seeded model.

Paths in the configuration may use ``${data_dir}`` (``data.data_dir``, else ``$MSTA_DATA_DIR``,
else ``./data``), ``${dataset}`` (the built-in dataset name in ``data.classes``), ``${root}``
(``data.root``, the video root) and environment variables.

Light on purpose: torch is imported by the functions that need it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from msta.config import Config, load_config
from msta.errors import TrainError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CLASSES_FILE = "classes.json"
SUMMARY_FILE = "train_summary.json"
LOCK_FILE = "train.lock"


# --------------------------------------------------------------------------- paths


def data_dir(cfg: Config) -> Path:
    from descgen.datasets import resolve_data_dir

    return resolve_data_dir(cfg.data.data_dir)


def expand(value: str | None, cfg: Config) -> str | None:
    """``${data_dir}``, ``${dataset}``, ``${root}``, ``$VARS`` and ``~`` expanded in a configured
    path (None stays None)."""
    if value is None:
        return None
    s = str(value).replace("${data_dir}", str(data_dir(cfg)))
    if "${dataset}" in s:
        s = s.replace("${dataset}", dataset_name(cfg))
    if "${root}" in s:
        s = s.replace("${root}", str(Path(os.path.expanduser(os.path.expandvars(cfg.data.root)))))
    return os.path.expanduser(os.path.expandvars(s))


def dataset_name(cfg: Config) -> str:
    """The built-in dataset name in ``data.classes`` (what ``${dataset}`` stands for)."""
    from descgen.datasets import BUILTIN

    name = str(cfg.data.classes or "")
    if name not in BUILTIN:
        raise TrainError(
            f"a path uses ${{dataset}}, but data.classes ({name or 'unset'}) is not a built-in dataset name "
            f"({', '.join(BUILTIN)}); put the dataset preset before the protocol preset (-c hmdb51 -c base2novel)"
        )
    return name


# --------------------------------------------------------------------------- classes and lists


def train_classes_spec(cfg: Config) -> str | None:
    """The class list the training (and validation) labels index: the base classes in base-to-novel
    runs, else ``data.classes``."""
    return cfg.data.base_classes or cfg.data.classes


def class_names(spec: str | None, cfg: Config) -> list[str]:
    """Class names of a class-list spec: a built-in dataset name, a list file, or ``a,b,c``."""
    from msta import data as mdata

    if spec is None or str(spec).strip() == "":
        raise TrainError("no class list configured: set data.classes (a dataset name or a class-list file)")
    spec = expand(spec, cfg)
    assert spec is not None
    if "," in spec and not Path(spec).exists():
        names = [c.strip() for c in spec.split(",") if c.strip()]
        if len(set(names)) != len(names):
            raise TrainError(f"class list {spec!r} names a class twice")
        return names
    try:
        loaded = mdata.load_classes(spec, str(data_dir(cfg)))
    except Exception as exc:  # noqa: BLE001 - class-list errors are user errors, shown as they are
        raise TrainError(f"cannot load class list {spec!r}: {exc}") from None
    names = list(getattr(loaded, "names", loaded))
    if not names:
        raise TrainError(f"class list {spec!r} is empty")
    return [str(n) for n in names]


def read_list(path: str | None, cfg: Config, what: str) -> list[Any]:
    """The ``(relative path, label)`` items of a configured video list."""
    from msta import data as mdata

    p = expand(path, cfg)
    if p is None:
        raise TrainError(f"no {what} configured")
    if not Path(p).is_file():
        raise TrainError(f"{what} not found: {p}")
    try:
        return list(mdata.read_video_list(p))
    except Exception as exc:  # noqa: BLE001
        raise TrainError(f"cannot read {what} {p}: {exc}") from None


def check_labels(items: Sequence[Any], num_classes: int, what: str) -> None:
    """Every label id of ``items`` indexes a class of a list of ``num_classes``."""
    bad = []
    for it in items:
        label = it[1] if isinstance(it, tuple | list) else getattr(it, "label", None)
        if label is None or not 0 <= int(label) < num_classes:
            bad.append(label)
    if bad:
        raise TrainError(
            f"{what}: {len(bad)} label ids are outside 0..{num_classes - 1} (first: {bad[0]}); "
            "is the class list the one the video list was written for? (With a protocol preset that "
            "sets its own lists, such as base2novel, give the dataset preset first: -c hmdb51 -c base2novel)"
        )


# --------------------------------------------------------------------------- the dataset


def hflip_for(cfg: Config) -> bool:
    """``data.hflip``, else the dataset's default (no flips where left and right matter)."""
    if cfg.data.hflip is not None:
        return bool(cfg.data.hflip)
    from msta import data as mdata

    return bool(mdata.default_hflip(cfg.data.classes or ""))


def make_dataset(
    cfg: Config,
    items: list[Any],
    train: bool,
    image_size: int,
    views: tuple[int, int] = (1, 1),
    root: str | None = None,
    max_retries: int = 10,
    stats: tuple | None = None,
):
    """The one video dataset of training, evaluation and prediction (``stats``: the backbone's
    input mean and std, ``model.input_stats``). Its samples are uint8 clips with their colour maps:
    read them with :func:`msta.transforms.batch_video`, which finishes them on the device."""
    from msta import data as mdata

    return mdata.VideoDataset(
        items,
        root=expand(root or cfg.data.root, cfg),
        num_frames=cfg.model.frames,
        train=train,
        input_size=cfg.data.input_size or image_size,
        hflip=hflip_for(cfg),
        decoder=cfg.data.decoder,
        seed=cfg.run.seed,
        views=views,
        max_retries=max_retries,
        stats=stats,
        defer_colour=True,
    )


# --------------------------------------------------------------------------- a run directory


def run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> Config:
    """The resolved configuration a run saved, with ``overrides`` applied."""
    p = Path(run_dir) / CONFIG_FILE
    if not p.is_file():
        raise TrainError(f"{run_dir} is not a training run ({CONFIG_FILE} not found)")
    return load_config([p], overrides)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (none when it has no such file)."""
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def load_run_model(run_dir: str | Path, cfg: Config, which: str, device):
    """The seeded model with a run's trained adapters (``which``: last or best), in eval mode."""
    from msta import checkpoint as ckpt

    model = build_seeded_model(cfg)
    weights, info = ckpt.load_weights(run_dir, which)
    model.load_trainable_state_dict(weights)
    model.to(device)
    model.eval()
    return model, info


# --------------------------------------------------------------------------- devices and the model


def pick_device(name: str):
    from msta.distributed import check_device
    from msta.distributed import pick_device as _pick

    check_device(name)
    return _pick(name)


class RunLock:
    """An exclusive lock on a run directory: ``fcntl.flock`` on ``train.lock`` inside it, held while
    a training process runs and released by the OS when that process dies. The file names the
    holder (pid, host, start time) for the message of the process that is refused."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TrainError(
                f"{self.path.parent} is in use by another training process ({self._holder()}); "
                "wait for it to end or choose another run.out"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode())
        self.fd = fd
        return self

    def _holder(self) -> str:
        try:
            h = json.loads(self.path.read_text(encoding="utf-8"))
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(h["started"])))
            return f"pid {h['pid']} on {h['host']}, started {started}"
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def release(self) -> None:
        if self.fd is not None:
            import fcntl

            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def autocast(device, precision: str):
    """The context a run's forward passes execute in, from the device and ``run.precision``: bf16
    autocast on CUDA when the precision is ``bf16``; a null context (plain fp32) for ``fp32`` and
    on every other device. Training, evaluation, prediction and comparison all use it, so a run is
    scored in the precision it trains in."""
    import torch

    if torch.device(device).type == "cuda" and precision == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_seeded_model(cfg: Config):
    """The model with a deterministic initialisation (random backbones and adapters depend on
    ``run.seed`` only, so every rank, a resumed run and ``msta eval`` rebuild the same weights)."""
    from msta.model import build_model

    seed_everything(cfg.run.seed)
    return build_model(cfg)
