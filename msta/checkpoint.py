"""Training checkpoints: trainable weights (safetensors) plus the trainer state.

Layout inside a run directory::

    checkpoints/
      step-00000120/
        adapters.safetensors   trainable parameters only (the frozen backbone is rebuilt from the config)
        trainer.pt             optimizer, scheduler, RNG states of every rank, data order, best metric
        manifest.json          size and sha256 of the two files above (checked on every load)
      last.json                {"dir": "step-00000120", "epoch": ..., "global_step": ..., ...}
      best.json
      previous.json            the checkpoint ``last`` named before (a resume falls back to it)

A checkpoint directory is written completely under a temporary name and renamed into place, then
the pointer file (``last.json`` / ``best.json``) is replaced atomically (temporary file +
``os.replace``). A kill at any moment leaves the previous pointer valid. Directories no pointer
names any more are removed afterwards. Checkpoints written before manifests existed still load
(their files are only checked by parsing them).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from descgen.fileio import sync_directory, write_text_atomic
from msta.errors import MstaError

WEIGHTS = "adapters.safetensors"
TRAINER = "trainer.pt"
MANIFEST = "manifest.json"
NAMES = ("last", "best", "previous")

# The former name of descgen.fileio.write_text_atomic, kept for callers.


class CheckpointError(MstaError):
    """A checkpoint cannot be read. The message is meant for the user, as is."""


def ckpt_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


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
        _write_manifest(tmp, info)
        if final.exists():
            # Same step written again (for example a best pointer after last): replace it
            # only when no pointer needs the old copy and it is intact, otherwise keep the old one.
            if _referenced(root) & {final.name} and not problems(final):
                shutil.rmtree(tmp)
                tmp = final
            else:
                shutil.rmtree(final)
        if tmp != final:
            os.replace(tmp, final)
        sync_directory(root)
    except BaseException:
        if tmp != final:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    old_last = pointer(run_dir, "last") if "last" in names else None
    if old_last is not None and old_last.get("dir") != final.name:
        write_text_atomic(root / "previous.json", json.dumps(old_last, indent=1))
    for name in names:
        write_text_atomic(root / f"{name}.json", json.dumps({"dir": final.name, **info}, indent=1))
    sync_directory(root)
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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_manifest(d: Path, info: dict[str, Any]) -> None:
    files = {f: {"size": (d / f).stat().st_size, "sha256": sha256_file(d / f)} for f in (WEIGHTS, TRAINER)}
    write_text_atomic(d / MANIFEST, json.dumps({"files": files, **info}, indent=1))


def problems(d: Path, files: tuple[str, ...] = (WEIGHTS, TRAINER)) -> list[str]:
    """What is wrong with the ``files`` of checkpoint directory ``d`` against its manifest (none
    for an intact checkpoint, or an old one without a manifest whose files exist)."""
    out = []
    try:
        manifest = json.loads((d / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:
        manifest = None
    except (OSError, ValueError, KeyError, TypeError):
        return [f"{MANIFEST} is unreadable"]
    for f in files:
        p = d / f
        if not p.is_file():
            out.append(f"{f} is missing")
            continue
        if manifest is None or f not in manifest:
            continue
        want = manifest[f]
        size = p.stat().st_size
        if size != want.get("size"):
            out.append(f"{f} has {size} bytes, expected {want.get('size')}")
        elif sha256_file(p) != want.get("sha256"):
            out.append(f"{f} does not match its sha256")
    return out


def verify(run_dir: str | Path, name: str = "last", files: tuple[str, ...] = (WEIGHTS, TRAINER)) -> Path:
    """The directory of checkpoint ``name``; :class:`CheckpointError` when it is corrupt."""
    d = checkpoint_dir(run_dir, name)
    bad = problems(d, files)
    if bad:
        raise CheckpointError(f"checkpoint {d} is corrupt: {'; '.join(bad)}")
    return d


def load_weights(run_dir: str | Path, name: str = "last") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Trainable weights and the info stored with them (epoch, global_step, metric, ...)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    d = verify(run_dir, name, (WEIGHTS,))
    try:
        weights = load_file(str(d / WEIGHTS))
        with safe_open(str(d / WEIGHTS), framework="pt") as f:
            meta = f.metadata() or {}
        info = {k: json.loads(v) for k, v in meta.items()}
    except Exception as exc:  # noqa: BLE001 - any parse failure of the file means a corrupt checkpoint
        raise CheckpointError(f"checkpoint {d} is corrupt: cannot read {WEIGHTS} ({exc})") from None
    return weights, info


def load_trainer_state(run_dir: str | Path, name: str = "last") -> dict[str, Any]:
    d = verify(run_dir, name, (TRAINER,))
    try:
        return torch.load(d / TRAINER, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {d} is corrupt: cannot read {TRAINER} ({exc})") from None


def repoint(run_dir: str | Path, name: str, target: str) -> None:
    """Point ``name`` at the checkpoint ``target`` points at (then prune what no pointer names)."""
    info = pointer(run_dir, target)
    if info is None:
        raise CheckpointError(f"no '{target}' checkpoint in {run_dir}")
    write_text_atomic(ckpt_root(run_dir) / f"{name}.json", json.dumps(info, indent=1))
    prune(run_dir)
