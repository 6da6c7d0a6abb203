"""Training checkpoints: trainable weights (safetensors) plus the trainer state.

Layout inside a run directory::

    checkpoints/
      step-00000120/
        adapters.safetensors   trainable parameters only (the frozen backbone is rebuilt from the config)
        trainer.pt             optimizer, scheduler, RNG states of every rank, data order, best metric
      last.json                {"dir": "step-00000120", "epoch": ..., "global_step": ..., ...}
      best.json

A checkpoint directory is written completely under a temporary name and renamed into place, then
the pointer file (``last.json`` / ``best.json``) is replaced atomically (temporary file +
``os.replace``). A kill at any moment leaves the previous pointer valid. Directories no pointer
names any more are removed afterwards.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from msta.errors import MstaError

WEIGHTS = "adapters.safetensors"
TRAINER = "trainer.pt"
NAMES = ("last", "best")


class CheckpointError(MstaError):
    """A checkpoint cannot be read. The message is meant for the user, as is."""


def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- RNG state


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_lists(random.getstate()),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    random.setstate(_to_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _to_lists(obj: Any) -> Any:
    if isinstance(obj, tuple | list):
        return [_to_lists(o) for o in obj]
    return obj


def _to_tuples(obj: Any) -> Any:
    if isinstance(obj, list):
        return tuple(_to_tuples(o) for o in obj)
    return obj


# --------------------------------------------------------------------------- save / load


def save(
    run_dir: str | Path,
    weights: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    info: dict[str, Any],
    names: tuple[str, ...] = ("last",),
) -> Path:
    """Write one checkpoint and point ``names`` (``last`` and/or ``best``) at it."""
    from safetensors.torch import save_file

    root = ckpt_root(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{int(info['global_step']):08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
        meta = {k: json.dumps(v) for k, v in info.items()}
        save_file(tensors, str(tmp / WEIGHTS), metadata=meta)
        torch.save(trainer_state, tmp / TRAINER)
        for f in (WEIGHTS, TRAINER):
            with open(tmp / f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            # Same step written again (for example a best pointer after last): replace it
            # only when no pointer needs the old copy, otherwise keep the old one.
            if _referenced(root) & {final.name}:
                shutil.rmtree(tmp)
                tmp = final
            else:
                shutil.rmtree(final)
        if tmp != final:
            os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        if tmp != final:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for name in names:
        atomic_write_text(root / f"{name}.json", json.dumps({"dir": final.name, **info}, indent=1))
    _fsync_dir(root)
    prune(run_dir)
    return final


def _referenced(root: Path) -> set[str]:
    out = set()
    for name in NAMES:
        p = root / f"{name}.json"
        if p.is_file():
            try:
                out.add(json.loads(p.read_text(encoding="utf-8"))["dir"])
            except (OSError, ValueError, KeyError):
                continue
    return out


def prune(run_dir: str | Path) -> None:
    """Remove checkpoint directories (and stale temporary ones) that no pointer names."""
    root = ckpt_root(run_dir)
    keep = _referenced(root)
    for p in root.iterdir():
        if p.is_dir() and p.name not in keep:
            shutil.rmtree(p, ignore_errors=True)


def pointer(run_dir: str | Path, name: str = "last") -> dict[str, Any] | None:
    p = ckpt_root(run_dir) / f"{name}.json"
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"checkpoint pointer {p} is unreadable: {exc}") from None
    return data


def checkpoint_dir(run_dir: str | Path, name: str = "last") -> Path:
    info = pointer(run_dir, name)
    if info is None:
        raise CheckpointError(f"no '{name}' checkpoint in {run_dir} (checkpoints/{name}.json not found)")
    d = ckpt_root(run_dir) / info["dir"]
    if not (d / WEIGHTS).is_file():
        raise CheckpointError(f"checkpoint {d} has no {WEIGHTS}")
    return d


def load_weights(run_dir: str | Path, name: str = "last") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Trainable weights and the info stored with them (epoch, global_step, metric, ...)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    d = checkpoint_dir(run_dir, name)
    weights = load_file(str(d / WEIGHTS))
    with safe_open(str(d / WEIGHTS), framework="pt") as f:
        meta = f.metadata() or {}
    info = {k: json.loads(v) for k, v in meta.items()}
    return weights, info


def load_trainer_state(run_dir: str | Path, name: str = "last") -> dict[str, Any]:
    d = checkpoint_dir(run_dir, name)
    return torch.load(d / TRAINER, map_location="cpu", weights_only=True)
