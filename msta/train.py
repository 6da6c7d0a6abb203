"""The MSTA training loop: one readable recipe for one process or many (``torchrun``).

* AdamW over the trainable (adapter) parameters only, per-step linear warm-up then cosine decay to
  ``lr * min_lr_ratio``, gradient accumulation, bf16 autocast on CUDA (fp32 on the CPU), optional
  ``torch.compile`` of the model's forward pass and gradient checkpointing.
* Under ``torchrun`` every rank sees its share of each global batch (see
  :class:`msta.distributed.ShardedOrder`); gradients are averaged in one all-reduce per optimizer
  step; metrics are reduced over ranks; only rank 0 writes files.
* The data order depends on ``(seed, epoch)`` only and every sample's augmentation on
  ``(seed, epoch, index)``, so a run resumed from a mid-epoch checkpoint skips exactly the batches
  it had done and ends with the same weights as an uninterrupted run.

Paths in the configuration may use ``${data_dir}`` (``data.data_dir``, else ``$MSTA_DATA_DIR``,
else ``./data``), ``${root}`` (``data.root``, the video root) and environment variables.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msta import checkpoint as ckpt
from msta.config import Config, load_config, save_config

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CLASSES_FILE = "classes.json"
SUMMARY_FILE = "train_summary.json"


class TrainError(Exception):
    """A problem the user can fix; the message is shown as is. ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- paths and classes


def data_dir(cfg: Config) -> Path:
    from descgen.datasets import resolve_data_dir

    return resolve_data_dir(cfg.data.data_dir)


def expand(value: str | None, cfg: Config) -> str | None:
    """``${data_dir}``, ``$VARS`` and ``~`` expanded in a configured path (None stays None)."""
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


def hflip_for(cfg: Config) -> bool:
    if cfg.data.hflip is not None:
        return bool(cfg.data.hflip)
    from msta import data as mdata

    return bool(mdata.default_hflip(cfg.data.classes or ""))


def parse_views(views: str) -> tuple[int, int]:
    try:
        clips, crops = (int(x) for x in views.lower().split("x"))
    except ValueError:
        raise TrainError(f"views must look like CLIPSxCROPS (e.g. 1x1, 4x3), got {views!r}") from None
    if clips < 1 or crops < 1:
        raise TrainError(f"views must be positive, got {views!r}")
    return clips, crops


def make_dataset(
    cfg: Config,
    items: list[Any],
    train: bool,
    image_size: int,
    views: tuple[int, int] = (1, 1),
    root: str | None = None,
    max_retries: int = 10,
    stats=None,
):
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
    )


# --------------------------------------------------------------------------- model


def pick_device(name: str):
    from msta.distributed import pick_device as _pick

    return _pick(name)


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def build_seeded_model(cfg: Config):
    """The model with a deterministic initialisation (random backbones and adapters depend on
    ``run.seed`` only, so every rank, a resumed run and ``msta eval`` rebuild the same weights)."""
    from msta.backbone import BackboneError
    from msta.config import ConfigError
    from msta.model import build_model

    seed_everything(cfg.run.seed)
    try:
        return build_model(cfg)
    except (BackboneError, ConfigError) as exc:
        raise TrainError(str(exc)) from None


def trainable_parameters(model) -> list:
    return [p for p in model.parameters() if p.requires_grad]


# --------------------------------------------------------------------------- descriptions


def prepare_descriptions(
    cfg: Config,
    model,
    names: Sequence[str],
    cache: str | None,
    is_main: bool = True,
    encode: bool = True,
    log=print,
):
    """Spatial and temporal description embeddings [C, N, D] for ``names`` from the model's own
    frozen text encoder. Missing embeddings are encoded (on the main process) and stored back.

    Raises :class:`TrainError` (exit 2) naming the classes without descriptions.
    """
    from descgen.encode import (
        DescgenDataError,
        MissingDescriptionsError,
        SetSelectionError,
        TextEncoder,
        encode_missing,
        load_description_embeddings,
        select_set,
        set_coverage,
    )
    from descgen.store import Store, StoreError

    path = cache or cfg.descriptions.cache
    if not path:
        raise TrainError(
            "loss.consistency_weight > 0 needs a description cache: pass --descriptions CACHE.db "
            "(or set descriptions.cache), or train without it with --set loss.consistency_weight=0"
        )
    path = expand(path, cfg)
    if not Path(path).is_file():
        raise TrainError(f"description cache not found: {path}")
    try:
        store = Store(path, create=False)
    except StoreError as exc:
        raise TrainError(str(exc)) from None
    d = cfg.descriptions
    try:
        try:
            set_ = select_set(store, set_id=d.set, backend=d.backend, model=d.model, prompt=d.prompt)
        except SetSelectionError:
            if d.set:
                raise
            try:
                set_ = select_set(
                    store, class_names=list(names), backend=d.backend, model=d.model, prompt=d.prompt
                )
            except SetSelectionError as exc:
                cands = store.list_sets(backend=d.backend, model=d.model, prompt_fp_prefix=d.prompt)
                if not cands:
                    raise
                best = max(cands, key=lambda s: set_coverage(store, s, list(names))["complete"])
                done = set(set_coverage(store, best, list(names))["complete_names"])
                missing = [c for c in names if c not in done]
                if not missing:
                    raise
                raise TrainError(
                    f"{exc}\n{len(missing)} training classes have no descriptions in the closest set "
                    f"{best.id}: {', '.join(missing)}"
                ) from None
        cov = set_coverage(store, set_, list(names))
        done = set(cov["complete_names"])
        missing = [c for c in names if c not in done]
        if missing:
            raise TrainError(
                f"{len(missing)} of {len(names)} training classes have no (complete) descriptions in set "
                f"{set_.id}: {', '.join(missing)}. Generate them with: descgen generate --cache {path} ..."
            )
        oc_model, tokenizer, model_name, pretrained = _frozen_text(model)
        encoder = TextEncoder.from_model(oc_model, tokenizer, model_name, pretrained)
        if is_main and encode:
            n = encode_missing(store, encoder, set_ids=[set_.id], progress=False)
            if n:
                log(f"encoded {n} descriptions with {encoder.fingerprint} and stored them in {path}")
        spatial, temporal = load_description_embeddings(store, set_.id, list(names), encoder.fingerprint)
    except MissingDescriptionsError as exc:
        raise TrainError(f"{exc} (classes: {', '.join(exc.classes)})") from None
    except DescgenDataError as exc:
        raise TrainError(str(exc)) from None
    finally:
        store.close()
    return (
        spatial,
        temporal,
        {"set": set_.id, "encoder": encoder.fingerprint, "cache": str(path), "n": set_.n},
    )


def _frozen_text(model) -> tuple[Any, Any, str, str]:
    """(open_clip model, tokenizer, model name, pretrained) of the model's frozen text backbone."""
    got = model.frozen_text_backbone()
    if isinstance(got, dict):
        oc, tok, name, pre = got.get("model"), got.get("tokenizer"), got.get("name"), got.get("pretrained")
    elif isinstance(got, tuple | list):
        if len(got) == 4:
            oc, tok, name, pre = got
        else:
            oc, name, pre = got
            tok = None
    else:
        oc, tok = got, None
        name, pre = getattr(model, "model_name", "model"), getattr(model, "pretrained", "none")
    if tok is None:
        tok = getattr(model, "tokenizer", None)
    if tok is None:
        import open_clip

        from descgen.encode import canonical_model_name

        tok = open_clip.get_tokenizer(canonical_model_name(str(name)))
    return oc, tok, str(name), str(pre)


# --------------------------------------------------------------------------- schedule


def lr_factor(step: int, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- logging


class MetricsLog:
    """JSONL metrics (rank 0) plus optional TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool, tensorboard: bool, log=print):
        self.path = run_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log("TensorBoard is not installed (pip install tensorboard); logging to metrics.jsonl only")
            else:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"))

    def truncate_after(self, global_step: int) -> None:
        """Drop entries written after a checkpoint (a resumed run writes them again)."""
        if not self.enabled or not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if int(row.get("global_step", 0)) <= global_step:
                keep.append(line)
        ckpt.atomic_write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            step = int(row.get("global_step", 0))
            prefix = row.get("type", "train")
            for k, v in row.items():
                if isinstance(v, int | float) and k not in ("global_step", "epoch", "time"):
                    self.tb.add_scalar(f"{prefix}/{k}", v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / METRICS_FILE
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


# --------------------------------------------------------------------------- the loop


@dataclass
class TrainState:
    epoch: int = 0  # current epoch (0-based)
    step_in_epoch: int = 0  # optimizer steps done in the current epoch
    global_step: int = 0
    best_top1: float | None = None
    best_epoch: int | None = None
    skipped: int = 0
    log_acc: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "skipped": self.skipped,
            "log_acc": dict(self.log_acc),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def resolve_train_config(configs: Sequence[str], overrides: Sequence[str], resume: bool) -> Config:
    """The configuration of a run. With ``resume`` and no ``--config``, the run directory's saved
    configuration (found through ``run.out`` from the overrides) is the base."""
    cfg = load_config(configs, overrides)
    if resume and not configs:
        saved = Path(cfg.run.out) / CONFIG_FILE
        if not saved.is_file():
            raise TrainError(
                f"--resume: no {CONFIG_FILE} in {cfg.run.out}; pass --config or --set run.out=RUN"
            )
        cfg = load_config([saved], overrides)
    return cfg


_TRAINING_KEYS = ("model", "adapter", "loss", "data", "optim")


def _check_resume_config(saved: Path, cfg: Config) -> None:
    old = load_config([saved]).to_dict()
    new = cfg.to_dict()
    diffs = []
    for sec in _TRAINING_KEYS:
        for k in sorted(set(old[sec]) | set(new[sec])):
            if k in ("num_workers",):
                continue
            if old[sec].get(k) != new[sec].get(k):
                diffs.append(f"{sec}.{k}: {old[sec].get(k)!r} -> {new[sec].get(k)!r}")
    if old["run"]["seed"] != new["run"]["seed"]:
        diffs.append(f"run.seed: {old['run']['seed']!r} -> {new['run']['seed']!r}")
    if diffs:
        raise TrainError(
            "--resume with a configuration that differs from the run's saved one would not continue the "
            "same training: " + "; ".join(diffs)
        )


def train(
    cfg: Config,
    descriptions: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a run; returns a summary dict (rank 0's view, the same on every rank)."""
    import torch
    from torch.utils.data import DataLoader

    from msta import distributed as D
    from msta.evaluate import evaluate_split
    from msta.loss import msta_loss

    env = D.setup(cfg.run.device)
    try:
        return _train(
            cfg, env, descriptions, resume, progress, torch, DataLoader, D, evaluate_split, msta_loss
        )
    finally:
        D.cleanup(env)


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _train(cfg, env, descriptions, resume, progress, torch, DataLoader, D, evaluate_split, msta_loss):
    console = _console()

    def log(msg: str) -> None:
        if env.is_main:
            console.print(msg, highlight=False, markup=False, soft_wrap=True)

    run_dir = Path(cfg.run.out)
    last = ckpt.pointer(run_dir, "last") if resume else None
    if resume and last is None:
        raise TrainError(f"--resume: no checkpoint in {run_dir} (checkpoints/last.json not found)")
    if not resume and ckpt.pointer(run_dir, "last") is not None:
        raise TrainError(
            f"{run_dir} already holds a training run; continue it with --resume or choose another run.out"
        )
    if resume and (run_dir / CONFIG_FILE).is_file():
        _check_resume_config(run_dir / CONFIG_FILE, cfg)

    o = cfg.optim
    per_step = env.world_size * o.accum_steps
    if o.batch_size % per_step:
        raise TrainError(
            f"optim.batch_size ({o.batch_size}) must be divisible by processes x accum_steps ({per_step})"
        )
    local_batch = o.batch_size // per_step

    # Data lists and classes (errors here stop before any heavy work).
    names = class_names(train_classes_spec(cfg), cfg)
    train_items = read_list(cfg.data.train_list, cfg, "training list (data.train_list)")
    check_labels(train_items, len(names), "data.train_list")
    val_items = None
    if cfg.data.val_list:
        val_items = read_list(cfg.data.val_list, cfg, "validation list (data.val_list)")
        check_labels(val_items, len(names), "data.val_list")
    if len(train_items) < o.batch_size:
        raise TrainError(
            f"the training list has {len(train_items)} videos, fewer than one batch ({o.batch_size})"
        )

    model = build_seeded_model(cfg)
    model.to(env.device)
    if cfg.run.grad_checkpointing:
        model.set_grad_checkpointing(True)

    desc_info: dict[str, Any] = {}
    spatial = temporal = None
    if cfg.loss.consistency_weight > 0:
        # Rank 0 encodes what is missing and stores it; the others wait, then read.
        err = None
        if env.is_main:
            try:
                spatial, temporal, desc_info = prepare_descriptions(
                    cfg, model, names, descriptions, is_main=True, log=log
                )
            except TrainError as exc:
                err = exc
        err = D.broadcast_object(env, (str(err), err.code) if err else None)
        if err:
            raise TrainError(err[0], err[1])
        if not env.is_main:
            spatial, temporal, desc_info = prepare_descriptions(
                cfg, model, names, descriptions, is_main=False, encode=False
            )
        model.train()
        spatial = spatial.to(env.device)
        temporal = temporal.to(env.device)

    params = trainable_parameters(model)
    if not params:
        raise TrainError("the configuration leaves no trainable parameters (adapter.branches=none?)")
    optimizer = torch.optim.AdamW(
        params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
    )

    order = D.ShardedOrder(len(train_items), env.world_size, env.rank, local_batch, cfg.run.seed)
    micro_per_epoch = order.batches_per_epoch()
    steps_per_epoch = micro_per_epoch // o.accum_steps
    if steps_per_epoch < 1:
        raise TrainError("not enough training videos for one optimizer step")
    total_steps = steps_per_epoch * o.epochs
    warmup_steps = int(round(o.warmup_epochs * steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, o.min_lr_ratio)
    )

    state = TrainState()
    if resume:
        weights, _info = ckpt.load_weights(run_dir, "last")
        model.load_trainable_state_dict({k: v.to(env.device) for k, v in weights.items()})
        ts = ckpt.load_trainer_state(run_dir, "last")
        optimizer.load_state_dict(ts["optimizer"])
        scheduler.load_state_dict(ts["scheduler"])
        state = TrainState.from_dict(ts["state"])
        rng = ts["rng"]
        if len(rng) != env.world_size:
            raise TrainError(
                f"--resume: the checkpoint was written by {len(rng)} processes, this run has {env.world_size}"
            )
        ckpt.set_rng_state(rng[env.rank], env.device)
        log(
            f"resumed from {run_dir}/checkpoints/{last['dir']}: epoch {state.epoch + 1}, "
            f"step {state.step_in_epoch}/{steps_per_epoch} of the epoch (global step {state.global_step})"
        )

    metrics = MetricsLog(run_dir, env.is_main, cfg.run.tensorboard, log=log)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / CONFIG_FILE)
        ckpt.atomic_write_text(
            run_dir / CLASSES_FILE,
            json.dumps({"classes": names, "descriptions": desc_info}, indent=1, ensure_ascii=False),
        )
        if resume:
            metrics.truncate_after(state.global_step)
    D.barrier(env)

    n_params = sum(p.numel() for p in params)
    log(
        f"training {len(names)} classes on {len(train_items)} videos: {o.epochs} epochs x {steps_per_epoch} steps "
        f"(global batch {o.batch_size} = {env.world_size} processes x {o.accum_steps} accumulation x "
        f"{local_batch}), {n_params:,} trainable parameters, device {env.device}"
    )

    forward = torch.compile(model) if cfg.run.compile else model

    def make_amp():
        return autocast(env.device)

    stats = model.input_stats
    train_set = make_dataset(cfg, train_items, train=True, image_size=model.image_size, stats=stats)
    val_set = (
        make_dataset(cfg, val_items, train=False, image_size=model.image_size, stats=stats)
        if val_items
        else None
    )
    eval_bs = cfg.eval.batch_size or max(1, o.batch_size // env.world_size)

    def save(names_: tuple[str, ...]) -> None:
        if state.log_acc:
            _flush_log(env, D, torch, state, metrics, state.epoch, scheduler.get_last_lr()[0], t_start)
        rng_all = D.gather_objects(env, ckpt.rng_state(env.device))
        if env.is_main:
            ts = {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_all,
                "state": state.to_dict(),
                "world_size": env.world_size,
            }
            info = {
                "epoch": state.epoch,
                "step_in_epoch": state.step_in_epoch,
                "global_step": state.global_step,
                "best_top1": state.best_top1,
                "best_epoch": state.best_epoch,
                "time": time.time(),
            }
            ckpt.save(run_dir, model.trainable_state_dict(), ts, info, names=names_)
        D.barrier(env)

    bar = _progress_bar(progress and env.is_main, console)
    t_start = time.time()
    last_val: dict[str, Any] | None = None
    try:
        while state.epoch < o.epochs:
            epoch = state.epoch
            train_set.set_epoch(epoch)
            micro = list(order.local_batches(epoch))[: steps_per_epoch * o.accum_steps]
            todo = micro[state.step_in_epoch * o.accum_steps :]
            loader = DataLoader(
                train_set,
                batch_sampler=D.BatchListSampler(todo),
                num_workers=cfg.data.num_workers,
                pin_memory=env.device.type == "cuda",
                persistent_workers=False,
                generator=torch.Generator().manual_seed(cfg.run.seed + epoch),
            )
            task = (
                bar.add_task(
                    f"epoch {epoch + 1}/{o.epochs}", total=steps_per_epoch, completed=state.step_in_epoch
                )
                if bar
                else None
            )
            model.train()
            optimizer.zero_grad(set_to_none=True)
            for i, batch in enumerate(loader):
                video = batch["video"].to(env.device, non_blocking=True)
                labels = batch["label"].to(env.device, non_blocking=True)
                with make_amp():
                    text = model.encode_class_prompts(names)
                    logits = forward(video, text)
                    loss, parts = msta_loss(
                        logits.float(),
                        labels,
                        text.float(),
                        spatial,
                        temporal,
                        cfg.loss.consistency_weight,
                    )
                (loss / o.accum_steps).backward()
                with torch.no_grad():
                    correct = (logits.argmax(-1) == labels).sum().item()
                _acc_add(state.log_acc, loss.item(), parts, correct, len(labels), o.accum_steps)
                state.log_acc["skipped"] = state.log_acc.get("skipped", 0.0) + float(
                    torch.as_tensor(batch.get("skipped", 0)).sum().item()
                )
                if (i + 1) % o.accum_steps:
                    continue
                D.average_gradients(env, params)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.global_step += 1
                state.step_in_epoch += 1
                if bar:
                    bar.update(
                        task, advance=1, description=f"epoch {epoch + 1}/{o.epochs} loss {loss.item():.3f}"
                    )
                end_of_epoch = state.step_in_epoch == steps_per_epoch
                if state.global_step % cfg.run.log_every_steps == 0 or end_of_epoch:
                    _flush_log(env, D, torch, state, metrics, epoch, scheduler.get_last_lr()[0], t_start)
                if end_of_epoch:
                    break
                if cfg.run.save_every_steps and state.global_step % cfg.run.save_every_steps == 0:
                    save(("last",))
            del loader
            if bar and task is not None:
                bar.remove_task(task)
            # End of epoch: validate when due, then checkpoint (last, and best when improved).
            state.epoch += 1
            state.step_in_epoch = 0
            due = cfg.eval.every and (state.epoch % cfg.eval.every == 0)
            names_ = ("last",)
            if val_set is not None and (due or state.epoch == o.epochs):
                res = evaluate_split(
                    model, val_set, names, env, batch_size=eval_bs, num_workers=cfg.data.num_workers
                )
                last_val = {"epoch": state.epoch, "top1": res["top1"], "top5": res["top5"]}
                metrics.write({"type": "val", "global_step": state.global_step, **last_val})
                log(
                    f"epoch {state.epoch}: val top-1 {res['top1']:.4f}, top-5 {res['top5']:.4f} ({res['n']} videos)"
                )
                if state.best_top1 is None or res["top1"] > state.best_top1:
                    state.best_top1, state.best_epoch = res["top1"], state.epoch
                    names_ = ("last", "best")
            elif val_set is None:
                names_ = ("last", "best")
            save(names_)
    finally:
        if bar:
            bar.stop()
        metrics.close()

    skipped = state.skipped
    summary = {
        "run_dir": str(run_dir),
        "epochs": o.epochs,
        "global_step": state.global_step,
        "best_top1": state.best_top1,
        "best_epoch": state.best_epoch,
        "last": last_val,
        "skipped_videos": skipped,
        "seconds": round(time.time() - t_start, 2),
        "trainable_parameters": n_params,
        "world_size": env.world_size,
        "descriptions": desc_info,
    }
    if env.is_main:
        ckpt.atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
        val = (
            f", val top-1 {last_val['top1']:.4f} (best {state.best_top1:.4f} at epoch {state.best_epoch})"
            if last_val
            else ""
        )
        log(
            f"done: {o.epochs} epochs, {state.global_step} steps in {summary['seconds']:.0f}s{val}, "
            f"{skipped} unreadable videos skipped; run in {run_dir}"
        )
    return summary


def autocast(device):
    """bf16 autocast on CUDA; plain fp32 elsewhere."""
    import torch

    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _acc_add(
    acc: dict[str, float], loss: float, parts: dict[str, Any], correct: int, n: int, accum: int
) -> None:
    """Sum a micro-batch's metrics into the pending log interval (per optimizer step: mean over micro-batches)."""
    acc["loss"] = acc.get("loss", 0.0) + loss / accum
    for k in ("ce", "cc"):
        v = parts.get(k)
        if v is not None:
            acc[k] = acc.get(k, 0.0) + float(v) / accum
    acc["correct"] = acc.get("correct", 0.0) + correct
    acc["n"] = acc.get("n", 0.0) + n
    acc["micro"] = acc.get("micro", 0.0) + 1.0 / accum


def _flush_log(
    env, D, torch, state: TrainState, metrics: MetricsLog, epoch: int, lr: float, t_start: float
) -> None:
    keys = sorted(state.log_acc)
    vals = torch.tensor([state.log_acc[k] for k in keys], dtype=torch.float64)
    vals = D.all_reduce_sum(env, vals)
    tot = dict(zip(keys, vals.tolist(), strict=True))
    steps = tot.get("micro", 0.0) / env.world_size
    row: dict[str, Any] = {"type": "train", "epoch": epoch + 1, "global_step": state.global_step}
    if steps > 0:
        for k in ("loss", "ce", "cc"):
            if k in tot:
                row[k] = tot[k] / env.world_size / steps
        row["acc"] = tot.get("correct", 0.0) / max(tot.get("n", 1.0), 1.0)
    row["lr"] = lr
    state.skipped += int(tot.get("skipped", 0.0))
    if tot.get("skipped"):
        row["skipped"] = int(tot["skipped"])
    row["time"] = round(time.time() - t_start, 3)
    metrics.write(row)
    state.log_acc = {}


def _progress_bar(enabled: bool, console):
    if not enabled:
        return None
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
        disable=not console.is_terminal,
    )
    bar.start()
    return bar
