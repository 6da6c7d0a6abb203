"""The MSTA training recipe: one readable loop for one process or many (``torchrun``).

* AdamW over the trainable (adapter) parameters only, per-step linear warm-up then cosine decay to
  ``lr * min_lr_ratio``, gradient accumulation, bf16 autocast on CUDA with ``run.precision: bf16``
  (fp32 with ``fp32`` and on the CPU; validation runs in the same precision), optional
  ``torch.compile`` of the model's forward pass and gradient checkpointing.
* Under ``torchrun`` every rank sees its share of each global batch (see
  :class:`msta.distributed.ShardedOrder`); gradients are averaged in one all-reduce per optimizer
  step; metrics are reduced over ranks; only rank 0 writes files.
* The data order depends on ``(seed, epoch)`` only and every sample's augmentation on
  ``(seed, epoch, index)``, so a run resumed from a mid-epoch checkpoint skips exactly the batches
  it had done and ends with the same weights as an uninterrupted run.

:class:`TrainRecipe` holds the run: ``setup`` (lists, model, descriptions, optimizer, resume),
``train_epoch``, ``evaluate``, ``save`` and ``summary``; :func:`train` runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch.utils.data import DataLoader

from descgen.fileio import write_text_atomic
from msta import checkpoint as ckpt
from msta import distributed as D
from msta.classifier import description_embeddings
from msta.config import Config, load_config, save_config
from msta.evaluate import evaluate_split
from msta.loss import msta_loss
from msta.run import (
    CLASSES_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    RunLock,
    TrainError,
    autocast,
    build_seeded_model,
    check_labels,
    class_names,
    expand,
    make_dataset,
    read_list,
    train_classes_spec,
)
from msta.schedule import lr_factor
from msta.transforms import batch_video

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
    path = _description_cache(cfg, cache)

    def choose(store):
        set_ = _select_description_set(store, cfg, names)
        _check_coverage(store, set_, names, path)
        return set_

    return description_embeddings(model, names, path, choose, encode=is_main and encode, log=log)


def _description_cache(cfg: Config, cache: str | None) -> str:
    path = cache or cfg.descriptions.cache
    if not path:
        raise TrainError(
            "loss.consistency_weight > 0 needs a description cache: pass --descriptions CACHE.db "
            "(or set descriptions.cache), or train without it with --set loss.consistency_weight=0"
        )
    path = expand(path, cfg)
    if Path(path).is_dir():
        raise TrainError(f"description cache {path} is a directory, not a cache file (give the .db file)")
    if not Path(path).is_file():
        raise TrainError(f"description cache not found: {path}")
    return path


def _select_description_set(store, cfg: Config, names: Sequence[str]):
    """The configured description set, else the one set that covers ``names``; when none does,
    the error names the classes the closest set lacks."""
    from descgen.encode import SetSelectionError, select_set, set_coverage

    d = cfg.descriptions
    try:
        return select_set(store, set_id=d.set, backend=d.backend, model=d.model, prompt=d.prompt)
    except SetSelectionError:
        if d.set:
            raise
    try:
        return select_set(store, class_names=list(names), backend=d.backend, model=d.model, prompt=d.prompt)
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


def _check_coverage(store, set_, names: Sequence[str], path: str) -> None:
    from descgen.encode import set_coverage

    done = set(set_coverage(store, set_, list(names))["complete_names"])
    missing = [c for c in names if c not in done]
    if missing:
        raise TrainError(
            f"{len(missing)} of {len(names)} training classes have no (complete) descriptions in set "
            f"{set_.id}: {', '.join(missing)}. Generate them with: descgen generate --cache {path} ..."
        )


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
        write_text_atomic(self.path, "".join(k + "\n" for k in keep))

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


# --------------------------------------------------------------------------- state and configuration


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
        return asdict(self)  # a copy: log_acc included

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def add_micro_batch(self, loss: float, parts: dict[str, Any], correct: int, n: int, accum: int) -> None:
        """Sum a micro-batch's metrics into the pending log interval (per optimizer step: mean over
        micro-batches)."""
        acc = self.log_acc
        acc["loss"] = acc.get("loss", 0.0) + loss / accum
        for k in ("ce", "cc"):
            v = parts.get(k)
            if v is not None:
                acc[k] = acc.get(k, 0.0) + float(v) / accum
        acc["correct"] = acc.get("correct", 0.0) + correct
        acc["n"] = acc.get("n", 0.0) + n
        acc["micro"] = acc.get("micro", 0.0) + 1.0 / accum


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


def _progress_bar(enabled: bool, console: Console):
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


# --------------------------------------------------------------------------- stopping


class StopSignals:
    """The first SIGINT or SIGTERM is remembered (the loop finishes its step, saves a checkpoint and
    ends); a second one ends the process at once. Handlers are installed in the main thread only
    and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, verbose: bool = True):
        self.verbose = verbose
        self.received: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old = {}

    def _say(self, text: str) -> None:
        if self.verbose:
            os.write(2, (text + "\n").encode())

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            self._say(f"{name} again: stopping now, without a checkpoint")
            os._exit(128 + signum)
        self.received = signum
        self._say(
            f"{name}: finishing the current step, then saving a checkpoint (send it again to stop at once)"
        )


def _any_rank(env: D.DistEnv, flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (a collective under torchrun)."""
    if not env.distributed:
        return flag
    dev = env.device if env.device.type == "cuda" else torch.device("cpu")
    return bool(D.all_reduce_sum(env, torch.tensor([float(flag)], device=dev)).item() > 0)


def resume_command(run_dir: Path) -> str:
    """This process's command line with ``--resume`` (under ``torchrun``, the launcher's command with
    the same number of processes; a plain ``msta train --resume`` when not started as ``msta train``)."""
    args = list(sys.argv[1:])
    if "train" not in args:
        return shlex.join(["msta", "train", "--resume", "--set", f"run.out={run_dir}"])
    if "--resume" not in args:
        args.insert(args.index("train") + 1, "--resume")
    module = Path(sys.argv[0]).name in ("cli.py", "__main__.py")
    world, nproc = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world > 1:
        launcher = ["torchrun", f"--nnodes={max(1, world // nproc)}", f"--nproc_per_node={nproc}"]
        head = [*launcher, "-m", "msta.cli"] if module else [*launcher, sys.argv[0]]
    else:
        head = ["msta"] if module or Path(sys.argv[0]).name == "msta" else [sys.argv[0]]
    return shlex.join(head + args)


# --------------------------------------------------------------------------- the recipe


class TrainRecipe:
    """One training run: ``setup`` once, then per epoch ``train_epoch``, ``evaluate`` and ``save``;
    ``summary`` at the end. :meth:`run` does all of it."""

    def __init__(
        self,
        cfg: Config,
        env: D.DistEnv,
        descriptions: str | None = None,
        resume: bool = False,
        progress: bool = True,
    ):
        self.cfg = cfg
        self.env = env
        self.descriptions = descriptions
        self.resume = resume
        self.progress = progress
        self.console = Console(stderr=True)
        self.run_dir = Path(cfg.run.out)
        self.state = TrainState()
        self.spatial = self.temporal = None
        self.desc_info: dict[str, Any] = {}
        self.last_val: dict[str, Any] | None = None
        self.bar = None
        self.t_start = time.time()

    def log(self, msg: str) -> None:
        if self.env.is_main:
            self.console.print(msg, highlight=False, markup=False, soft_wrap=True)

    def run(self) -> dict[str, Any]:
        done = self._finished_summary()
        if done is not None:
            return done
        with self._run_lock(), StopSignals(self.env.is_main) as self.signals:
            self.setup()
            self.bar = _progress_bar(self.progress and self.env.is_main, self.console)
            self.t_start = time.time()
            try:
                while self.state.epoch < self.cfg.optim.epochs:
                    self.train_epoch()
                    self.save(self.evaluate())
                    if self.state.epoch < self.cfg.optim.epochs:
                        self._stop_if_signalled(save=False)
            finally:
                if self.bar:
                    self.bar.stop()
                self.metrics.close()
            return self.summary()

    def _finished_summary(self) -> dict[str, Any] | None:
        """With ``--resume`` on a run that has done all its epochs: say so, change nothing and
        return its summary (None for any other run)."""
        if not self.resume:
            return None
        last = ckpt.pointer(self.run_dir, "last")
        if last is None or int(last.get("epoch", 0)) < self.cfg.optim.epochs:
            return None
        if (self.run_dir / CONFIG_FILE).is_file():
            _check_resume_config(self.run_dir / CONFIG_FILE, self.cfg)
        self.log(
            f"{self.run_dir} is already finished ({last['epoch']} of {self.cfg.optim.epochs} epochs, "
            f"global step {last.get('global_step')}); nothing to resume"
        )
        try:
            return json.loads((self.run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"run_dir": str(self.run_dir), "epochs": self.cfg.optim.epochs, "finished": True}

    @contextlib.contextmanager
    def _run_lock(self):
        """The run directory's lock (rank 0 takes it; every rank learns whether it got it)."""
        lock = RunLock(self.run_dir)
        err = None
        if self.env.is_main:
            try:
                lock.acquire()
            except TrainError as exc:
                err = str(exc)
        err = D.broadcast_object(self.env, err)
        if err:
            raise TrainError(err)
        try:
            yield lock
        finally:
            lock.release()

    def _stop_if_signalled(self, save: bool = True) -> None:
        """After a signal (seen by any rank): save a checkpoint at this step and end the run."""
        if not _any_rank(self.env, self.signals.received is not None):
            return
        state = self.state
        if save:
            self.save(("last",))
        sig = self.signals.received or signal.SIGTERM
        raise TrainError(
            f"stopped by {signal.Signals(sig).name} at epoch {state.epoch + 1}, step {state.step_in_epoch} "
            f"(global step {state.global_step}); checkpoint saved. Continue with: {resume_command(self.run_dir)}",
            128 + int(sig),
        )

    # ----------------------------------------------------------------------- setup

    def setup(self) -> None:
        """Everything before the first step; user errors surface before any heavy work."""
        last = self._check_run_dir()
        self._check_batch()
        self._load_lists()
        self._setup_model()
        self._setup_descriptions()
        self._setup_optimizer()
        if self.resume:
            self._load_checkpoint(last)
        self._write_run_files()
        self._announce()
        cfg, model = self.cfg, self.model
        self.forward = torch.compile(model) if cfg.run.compile else model
        self.train_set = make_dataset(
            cfg, self.train_items, train=True, image_size=model.image_size, stats=model.input_stats
        )
        self.val_set = (
            make_dataset(
                cfg, self.val_items, train=False, image_size=model.image_size, stats=model.input_stats
            )
            if self.val_items
            else None
        )
        self.eval_bs = cfg.eval.batch_size or max(1, cfg.optim.batch_size // self.env.world_size)

    def _check_run_dir(self) -> dict[str, Any] | None:
        run_dir = self.run_dir
        last = ckpt.pointer(run_dir, "last") if self.resume else None
        if self.resume and last is None:
            raise TrainError(f"--resume: no checkpoint in {run_dir} (checkpoints/last.json not found)")
        if not self.resume and ckpt.pointer(run_dir, "last") is not None:
            raise TrainError(
                f"{run_dir} already holds a training run; continue it with --resume or choose another run.out"
            )
        if self.resume and (run_dir / CONFIG_FILE).is_file():
            _check_resume_config(run_dir / CONFIG_FILE, self.cfg)
        return last

    def _check_batch(self) -> None:
        o = self.cfg.optim
        per_step = self.env.world_size * o.accum_steps
        if o.batch_size % per_step:
            raise TrainError(
                f"optim.batch_size ({o.batch_size}) must be divisible by processes x accum_steps ({per_step})"
            )
        self.local_batch = o.batch_size // per_step

    def _load_lists(self) -> None:
        cfg = self.cfg
        self.names = names = class_names(train_classes_spec(cfg), cfg)
        self.train_items = read_list(cfg.data.train_list, cfg, "training list (data.train_list)")
        check_labels(self.train_items, len(names), "data.train_list")
        self.val_items = None
        if cfg.data.val_list:
            self.val_items = read_list(cfg.data.val_list, cfg, "validation list (data.val_list)")
            check_labels(self.val_items, len(names), "data.val_list")
        if len(self.train_items) < cfg.optim.batch_size:
            raise TrainError(
                f"the training list has {len(self.train_items)} videos, fewer than one batch ({cfg.optim.batch_size})"
            )

    def _setup_model(self) -> None:
        self.model = build_seeded_model(self.cfg)
        self.model.to(self.env.device)
        if self.cfg.run.grad_checkpointing:
            self.model.set_grad_checkpointing(True)

    def _setup_descriptions(self) -> None:
        """Rank 0 encodes the missing description embeddings and stores them; the others wait, then read."""
        if self.cfg.loss.consistency_weight <= 0:
            return
        env, model = self.env, self.model
        err = None
        if env.is_main:
            try:
                got = prepare_descriptions(
                    self.cfg, model, self.names, self.descriptions, is_main=True, log=self.log
                )
            except TrainError as exc:
                err = exc
        err = D.broadcast_object(env, (str(err), err.exit_code) if err else None)
        if err:
            raise TrainError(err[0], err[1])
        if not env.is_main:
            got = prepare_descriptions(
                self.cfg, model, self.names, self.descriptions, is_main=False, encode=False
            )
        spatial, temporal, self.desc_info = got
        model.train()
        self.spatial = spatial.to(env.device)
        self.temporal = temporal.to(env.device)

    def _setup_optimizer(self) -> None:
        o, env = self.cfg.optim, self.env
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise TrainError("the configuration leaves no trainable parameters (adapter.branches=none?)")
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=o.weight_decay
        )
        self.order = D.ShardedOrder(
            len(self.train_items), env.world_size, env.rank, self.local_batch, self.cfg.run.seed
        )
        self.steps_per_epoch = self.order.batches_per_epoch() // o.accum_steps
        if self.steps_per_epoch < 1:
            raise TrainError("not enough training videos for one optimizer step")
        total_steps = self.steps_per_epoch * o.epochs
        warmup_steps = int(round(o.warmup_epochs * self.steps_per_epoch))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, o.min_lr_ratio, o.schedule)
        )

    def _read_checkpoint(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """Weights, trainer state and pointer of the last intact checkpoint: ``last``, else (with a
        warning) the ``previous`` one, which then becomes ``last``."""
        run_dir = self.run_dir
        try:
            weights, _ = ckpt.load_weights(run_dir, "last")
            return weights, ckpt.load_trainer_state(run_dir, "last"), ckpt.pointer(run_dir, "last")
        except ckpt.CheckpointError as exc:
            reason = str(exc)
            prev = ckpt.pointer(run_dir, "previous")
            if prev is None:
                raise
            try:
                weights, _ = ckpt.load_weights(run_dir, "previous")
                ts = ckpt.load_trainer_state(run_dir, "previous")
            except ckpt.CheckpointError:
                raise exc from None
        self.log(f"warning: {reason}; resuming from the previous checkpoint {prev['dir']} instead")
        D.barrier(self.env)
        if self.env.is_main:
            ckpt.repoint(run_dir, "last", "previous")
        D.barrier(self.env)
        return weights, ts, prev

    def _load_checkpoint(self, last: dict[str, Any]) -> None:
        env, run_dir = self.env, self.run_dir
        weights, ts, last = self._read_checkpoint()
        self.model.load_trainable_state_dict({k: v.to(env.device) for k, v in weights.items()})
        self.optimizer.load_state_dict(ts["optimizer"])
        self.scheduler.load_state_dict(ts["scheduler"])
        self.state = state = TrainState.from_dict(ts["state"])
        rng = ts["rng"]
        if len(rng) != env.world_size:
            raise TrainError(
                f"--resume: the checkpoint was written by {len(rng)} processes, this run has {env.world_size}"
            )
        ckpt.set_rng_state(rng[env.rank], env.device)
        self.log(
            f"resumed from {run_dir}/checkpoints/{last['dir']}: epoch {state.epoch + 1}, "
            f"step {state.step_in_epoch}/{self.steps_per_epoch} of the epoch (global step {state.global_step})"
        )

    def _write_run_files(self) -> None:
        env, run_dir = self.env, self.run_dir
        self.metrics = MetricsLog(run_dir, env.is_main, self.cfg.run.tensorboard, log=self.log)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, run_dir / CONFIG_FILE)
            classes = {"classes": self.names, "descriptions": self.desc_info}
            write_text_atomic(run_dir / CLASSES_FILE, json.dumps(classes, indent=1, ensure_ascii=False))
            if self.resume:
                self.metrics.truncate_after(self.state.global_step)
        D.barrier(env)

    def _announce(self) -> None:
        o, env = self.cfg.optim, self.env
        self.n_params = sum(p.numel() for p in self.params)
        self.log(
            f"training {len(self.names)} classes on {len(self.train_items)} videos: {o.epochs} epochs x "
            f"{self.steps_per_epoch} steps (global batch {o.batch_size} = {env.world_size} processes x "
            f"{o.accum_steps} accumulation x {self.local_batch}), {self.n_params:,} trainable parameters, "
            f"device {env.device}"
        )

    # ----------------------------------------------------------------------- one epoch

    def train_epoch(self) -> None:
        """The rest of the current epoch (all of it, unless resumed mid-epoch)."""
        o, state = self.cfg.optim, self.state
        epoch = state.epoch
        loader = self._epoch_loader(epoch)
        task = None
        if self.bar:
            task = self.bar.add_task(
                f"epoch {epoch + 1}/{o.epochs}", total=self.steps_per_epoch, completed=state.step_in_epoch
            )
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(loader):
            loss = self._micro_step(batch)
            if (i + 1) % o.accum_steps:
                continue
            self._optimizer_step()
            if self.bar:
                self.bar.update(task, advance=1, description=f"epoch {epoch + 1}/{o.epochs} loss {loss:.3f}")
            end_of_epoch = state.step_in_epoch == self.steps_per_epoch
            if state.global_step % self.cfg.run.log_every_steps == 0 or end_of_epoch:
                self._flush_log(epoch)
            if end_of_epoch:
                break
            every = self.cfg.run.save_every_steps
            if every and state.global_step % every == 0:
                self.save(("last",))
            self._stop_if_signalled()
        del loader
        if self.bar and task is not None:
            self.bar.remove_task(task)
        state.epoch += 1
        state.step_in_epoch = 0

    def _epoch_loader(self, epoch: int) -> DataLoader:
        """The epoch's batches this rank has not done yet (a resumed run skips the done ones)."""
        o, env = self.cfg.optim, self.env
        self.train_set.set_epoch(epoch)
        micro = list(self.order.local_batches(epoch))[: self.steps_per_epoch * o.accum_steps]
        todo = micro[self.state.step_in_epoch * o.accum_steps :]
        return DataLoader(
            self.train_set,
            batch_sampler=D.BatchListSampler(todo),
            num_workers=self.cfg.data.num_workers,
            pin_memory=env.device.type == "cuda",
            persistent_workers=False,
            generator=torch.Generator().manual_seed(self.cfg.run.seed + epoch),
        )

    def _micro_step(self, batch: dict[str, Any]) -> float:
        """Forward and backward of one micro-batch (the gradient scaled by 1 / accum_steps)."""
        env, model, accum = self.env, self.model, self.cfg.optim.accum_steps
        video = batch_video(batch, env.device)
        labels = batch["label"].to(env.device, non_blocking=True)
        with autocast(env.device, self.cfg.run.precision):
            text = model.encode_class_prompts(self.names)
            logits = self.forward(video, text)
            loss, parts = msta_loss(
                logits.float(),
                labels,
                text.float(),
                self.spatial,
                self.temporal,
                self.cfg.loss.consistency_weight,
            )
        (loss / accum).backward()
        with torch.no_grad():
            correct = (logits.argmax(-1) == labels).sum().item()
        value = loss.item()
        self.state.add_micro_batch(value, parts, correct, len(labels), accum)
        acc = self.state.log_acc
        acc["skipped"] = acc.get("skipped", 0.0) + float(
            torch.as_tensor(batch.get("skipped", 0)).sum().item()
        )
        return value

    def _optimizer_step(self) -> None:
        D.average_gradients(self.env, self.params)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.step_in_epoch += 1

    def _flush_log(self, epoch: int) -> None:
        """Write the pending interval's metrics, reduced over ranks, as one ``train`` row."""
        env, state = self.env, self.state
        keys = sorted(state.log_acc)
        vals = torch.tensor([state.log_acc[k] for k in keys], dtype=torch.float64)
        tot = dict(zip(keys, D.all_reduce_sum(env, vals).tolist(), strict=True))
        steps = tot.get("micro", 0.0) / env.world_size
        row: dict[str, Any] = {"type": "train", "epoch": epoch + 1, "global_step": state.global_step}
        if steps > 0:
            for k in ("loss", "ce", "cc"):
                if k in tot:
                    row[k] = tot[k] / env.world_size / steps
            row["acc"] = tot.get("correct", 0.0) / max(tot.get("n", 1.0), 1.0)
        row["lr"] = self.scheduler.get_last_lr()[0]
        state.skipped += int(tot.get("skipped", 0.0))
        if tot.get("skipped"):
            row["skipped"] = int(tot["skipped"])
        row["time"] = round(time.time() - self.t_start, 3)
        self.metrics.write(row)
        state.log_acc = {}

    # ----------------------------------------------------------------------- evaluate, save, summary

    def evaluate(self) -> tuple[str, ...]:
        """Validate after an epoch when due; returns the checkpoint names to write now (``best``
        too when the validation top-1 improved, or when there is no validation list)."""
        cfg, state = self.cfg, self.state
        if self.val_set is None:
            return ("last", "best")
        due = cfg.eval.every and (state.epoch % cfg.eval.every == 0)
        if not (due or state.epoch == cfg.optim.epochs):
            return ("last",)
        res = evaluate_split(
            self.model,
            self.val_set,
            self.names,
            self.env,
            batch_size=self.eval_bs,
            num_workers=cfg.data.num_workers,
            precision=cfg.run.precision,
        )
        self.last_val = {"epoch": state.epoch, "top1": res["top1"], "top5": res["top5"]}
        self.metrics.write({"type": "val", "global_step": state.global_step, **self.last_val})
        self.log(
            f"epoch {state.epoch}: val top-1 {res['top1']:.4f}, top-5 {res['top5']:.4f} ({res['n']} videos)"
        )
        if state.best_top1 is None or res["top1"] > state.best_top1:
            state.best_top1, state.best_epoch = res["top1"], state.epoch
            return ("last", "best")
        return ("last",)

    def save(self, names: tuple[str, ...]) -> None:
        """Checkpoint the adapters, optimizer, scheduler, state and every rank's RNG (rank 0 writes)."""
        env, state = self.env, self.state
        if state.log_acc:
            self._flush_log(state.epoch)
        rng_all = D.gather_objects(env, ckpt.rng_state(env.device))
        if env.is_main:
            trainer = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
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
            ckpt.save(self.run_dir, self.model.trainable_state_dict(), trainer, info, names=names)
        D.barrier(self.env)

    def summary(self) -> dict[str, Any]:
        """The run's summary (written to ``train_summary.json`` by rank 0) and its last log line."""
        o, state, last_val = self.cfg.optim, self.state, self.last_val
        summary = {
            "run_dir": str(self.run_dir),
            "epochs": o.epochs,
            "global_step": state.global_step,
            "best_top1": state.best_top1,
            "best_epoch": state.best_epoch,
            "last": last_val,
            "skipped_videos": state.skipped,
            "seconds": round(time.time() - self.t_start, 2),
            "trainable_parameters": self.n_params,
            "world_size": self.env.world_size,
            "descriptions": self.desc_info,
        }
        if self.env.is_main:
            write_text_atomic(self.run_dir / SUMMARY_FILE, json.dumps(summary, indent=1))
            val = (
                f", val top-1 {last_val['top1']:.4f} (best {state.best_top1:.4f} at epoch {state.best_epoch})"
                if last_val
                else ""
            )
            self.log(
                f"done: {o.epochs} epochs, {state.global_step} steps in {summary['seconds']:.0f}s{val}, "
                f"{state.skipped} unreadable videos skipped; run in {self.run_dir}"
            )
        return summary


def train(
    cfg: Config,
    descriptions: str | None = None,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) a run; returns a summary dict (rank 0's view, the same on every rank)."""
    env = D.setup(cfg.run.device)
    try:
        return TrainRecipe(cfg, env, descriptions, resume, progress).run()
    finally:
        D.cleanup(env)
