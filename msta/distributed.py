"""Process-group set-up for ``torchrun`` and a deterministic, resumable sharding sampler.

The same code runs with one process (no process group at all) and under ``torchrun``
(``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the environment): NCCL on CUDA, Gloo on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from msta.errors import TrainError


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def available_devices() -> list[str]:
    """The device names this machine can run on (``cpu`` always)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(name: str) -> None:
    """:class:`TrainError` naming the available devices when ``name`` (``auto``, ``cpu``, ``cuda``,
    ``cuda:1``, ``mps``) is unknown or not usable on this machine."""
    if name == "auto":
        return
    avail = available_devices()
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise TrainError(f"unknown device {name!r}; available: {', '.join(avail)}") from None
    if dev.type == "cuda" and dev.index is not None and torch.cuda.is_available():
        ok = dev.index < torch.cuda.device_count()
    else:
        ok = dev.type in avail
    if not ok:
        raise TrainError(f"{name} is not available here; available: {', '.join(avail)}")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: the local CUDA device when there is one, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def setup(device: str = "auto") -> DistEnv:
    """Join the process group when launched by ``torchrun``; a plain single process otherwise.
    A device this machine lacks is a :class:`msta.run.TrainError` naming the ones it has."""
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    env = DistEnv(rank=rank, world_size=world, local_rank=local_rank, device=dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        env.initialized_here = True
    return env


def cleanup(env: DistEnv) -> None:
    if env.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def broadcast_object(env: DistEnv, obj: Any, src: int = 0) -> Any:
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's object, in rank order (on every rank)."""
    if not env.distributed:
        return [obj]
    out: list[Any] = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(env: DistEnv, values: torch.Tensor) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def average_gradients(env: DistEnv, params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over all ranks in one flat all-reduce.

    The trainable adapters are small, so one bucket is enough; a missing gradient counts as zero,
    which keeps every rank in the same collective.
    """
    if not env.distributed or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= env.world_size
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        chunk = flat[offset : offset + n].view_as(g).to(g.dtype)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        offset += n


@dataclass(frozen=True)
class ShardedOrder:
    """Which samples each rank sees, in which order, for one epoch; resumable mid-epoch.

    The order is a permutation drawn from ``(seed, epoch)`` only (no global RNG), padded by
    repetition to a multiple of ``world_size * batch`` when ``drop_last`` is off, or cut to it when
    on. Rank ``r`` takes positions ``r, r + W, r + 2W, ...``, so the union of the ranks' k-th local
    batches is exactly the k-th global batch of a single process with the same global batch size.
    """

    num_samples: int
    world_size: int
    rank: int
    local_batch: int
    seed: int
    shuffle: bool = True
    drop_last: bool = True

    @property
    def global_batch(self) -> int:
        return self.local_batch * self.world_size

    def batches_per_epoch(self) -> int:
        if self.drop_last:
            return self.num_samples // self.global_batch
        return -(-self.num_samples // self.global_batch)

    def epoch_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = list(range(self.num_samples))
        total = self.batches_per_epoch() * self.global_batch
        if total > len(order):
            order = (order * (total // max(len(order), 1) + 1))[:total]
        return order[:total]

    def local_batches(self, epoch: int, skip_batches: int = 0) -> Iterator[list[int]]:
        order = self.epoch_order(epoch)[self.rank :: self.world_size]
        for b in range(skip_batches, self.batches_per_epoch()):
            yield order[b * self.local_batch : (b + 1) * self.local_batch]


class BatchListSampler(torch.utils.data.Sampler[list[int]]):
    """A batch sampler over precomputed index batches (for ``DataLoader(batch_sampler=...)``)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def shard_indices(n: int, env: DistEnv) -> list[int]:
    """An evaluation shard: every sample exactly once over all ranks (no padding)."""
    return list(range(env.rank, n, env.world_size))
