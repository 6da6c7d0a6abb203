"""Text towers and the resolution of their weights: the one loading path of every model.

``descgen encode`` and msta's backbone factory both go through :func:`resolve_encoder`, so the
same name and weights always give the same model, the same text tower and the same encoder
fingerprint.

Model names (:func:`resolve_encoder`):

* a ViCLIP config: ``viclip-b16``, ``viclip-l14``, ``viclip-tiny`` (shipped in
  ``descgen/models``) or a JSON file with ``"family": "viclip"``;
* an open_clip model name (``ViT-B-16``), a shipped open_clip config (``clip-tiny``) or an
  open_clip model-config JSON file.

Weights: ``none`` (random, seeded: the same config always gives the same weights), a local
checkpoint file, or (open_clip only) a pretrained tag. A tag whose weights are not in the local
cache fails at once when ``HF_HUB_OFFLINE`` is set or the hub cannot be reached. ViCLIP weights
always come from a local file (the released ``.pth`` holding ``{"model": state_dict}``, or a
``.safetensors`` file holding the same keys).

torch and open_clip are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from descgen.errors import DescgenError

SHIPPED_MODELS = Path(__file__).resolve().parent / "models"
RANDOM_SEED = 0  # "pretrained: none" always gives the same weights (every process, every run)
VICLIP_CONTEXT = 32
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class DescgenDataError(DescgenError):
    """A problem the user can fix (wrong set, missing data, unusable encoder). Message is for the user."""


class EncoderLoadError(DescgenDataError):
    """The model cannot be built (unknown name, weights not available offline, bad file)."""


@dataclass
class EncoderSpec:
    """What to build: a model family and config, and where its weights come from."""

    family: str  # "open_clip" or "viclip"
    name: str  # canonical model name (registered open_clip name, or the ViCLIP config name)
    pretrained: str  # as recorded: "none", an absolute file path, or an open_clip tag
    checkpoint: str | None = None  # the local file to load; None for random weights
    quick_gelu: bool = False  # open_clip weights trained with QuickGELU
    config: dict[str, Any] = field(default_factory=dict)  # the ViCLIP config

    @property
    def random_weights(self) -> bool:
        return self.checkpoint is None


def is_random(pretrained: str | None) -> bool:
    return str(pretrained or "").strip().lower() in {"", "none", "random"}


# ---------------------------------------------------------------------- model names


def _read_json(path: Path) -> dict[str, Any]:
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EncoderLoadError(f"cannot read model config {path}: {exc}") from None
    if not isinstance(cfg, dict):
        raise EncoderLoadError(f"model config {path} is not a JSON object")
    return cfg


def _config_file(model: str) -> Path | None:
    """The JSON config ``model`` names: a path, or a shipped config name; None for other names."""
    p = Path(model).expanduser()
    if model.endswith(".json") or (p.suffix == "" and p.is_file()):
        if not p.is_file():
            raise EncoderLoadError(f"model config {model} does not exist")
        return p
    shipped = SHIPPED_MODELS / f"{model}.json"
    if "/" not in model and shipped.is_file():
        return shipped
    return None


def _register_open_clip(path: Path, cfg: dict[str, Any]) -> str:
    import open_clip

    if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise EncoderLoadError(
            f"{path} is not an open_clip model config (it needs embed_dim, vision_cfg and text_cfg) "
            'nor a ViCLIP config ("family": "viclip")'
        )
    if open_clip.get_model_config(path.stem) != cfg:
        open_clip.add_model_config(path)
    return path.stem


def resolve_name(model: str) -> tuple[str, str, dict[str, Any]]:
    """``(family, canonical name, ViCLIP config)`` of a model name or config file."""
    import open_clip

    model = str(model)
    path = _config_file(model)
    if path is not None:
        cfg = _read_json(path)
        if cfg.get("family") == "viclip":
            return "viclip", path.stem, cfg
        return "open_clip", _register_open_clip(path, cfg), {}
    if model in open_clip.list_models():
        return "open_clip", model, {}
    known = [*open_clip.list_models(), *(p.stem for p in SHIPPED_MODELS.glob("*.json"))]
    close = [m for m in known if model.lower().replace("/", "-") in m.lower()]
    hint = f" (did you mean: {', '.join(close[:6])})" if close else ""
    raise EncoderLoadError(
        f"unknown backbone {model!r}: not an open_clip model name, a shipped config "
        f"({', '.join(sorted(p.stem for p in SHIPPED_MODELS.glob('*.json')))}) nor a model-config "
        f"JSON file{hint}"
    )


def context_length(model: str) -> int:
    """The text context of a model (tokens, including start and end) without building it: what a
    description longer than this is truncated to."""
    family, name, cfg = resolve_name(model)
    if family == "viclip":
        return int(cfg["text_cfg"].get("context_length", VICLIP_CONTEXT))
    import open_clip

    oc = open_clip.get_model_config(name) or {}
    return int(oc.get("text_cfg", {}).get("context_length", 77))


# ---------------------------------------------------------------------- weights


def _offline() -> bool:
    v = os.environ.get("HF_HUB_OFFLINE") or ""
    return v.strip().lower() in {"1", "true", "yes", "on"}


def _hub_reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _hf_cached_file(hf_hub: str) -> str | None:
    """The local path of an open_clip pretrained file on the Hugging Face hub, if cached."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - open_clip depends on it
        return None
    repo_id, filename = os.path.split(hf_hub)  # "org/repo/" (default file name) or "org/repo/file"
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    for n in names:
        try:
            found = try_to_load_from_cache(repo_id=repo_id, filename=n)
        except Exception:  # noqa: BLE001 - any cache problem means "not cached"
            found = None
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def _cached_tag_file(tag_cfg: dict[str, Any]) -> str | None:
    hf_hub = tag_cfg.get("hf_hub", "")
    cached = _hf_cached_file(hf_hub) if hf_hub else None
    url = tag_cfg.get("url", "")
    if cached is None and url:  # open_clip's own download cache for URL-only weights
        local = Path("~/.cache/clip").expanduser() / os.path.basename(url)
        cached = str(local) if local.is_file() else None
    return cached


def _open_clip_tag(name: str, tag: str) -> tuple[str, bool]:
    """The local file of a pretrained tag (downloaded when allowed) and its QuickGELU flag."""
    import open_clip
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    tag_cfg = get_pretrained_cfg(name, tag)
    if not tag_cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no pretrained tags"
        raise EncoderLoadError(
            f"pretrained {tag!r} is neither a file nor a known tag for {name} ({known}); "
            "use pretrained none for random weights"
        )
    quick_gelu = bool(tag_cfg.get("quick_gelu", False))
    cached = _cached_tag_file(tag_cfg)
    if cached:
        return cached, quick_gelu
    if _offline() or not _hub_reachable():
        why = "HF_HUB_OFFLINE is set" if _offline() else "the model hub cannot be reached"
        raise EncoderLoadError(
            f"weights {name}/{tag} are not in the local cache and cannot be downloaded ({why}); download "
            "them once with "
            "network access, pass a local checkpoint file as the pretrained weights, or use "
            "pretrained none for random weights"
        )
    try:
        path = download_pretrained(tag_cfg)
    except Exception as exc:  # noqa: BLE001 - network and hub errors of every kind
        raise EncoderLoadError(f"cannot download weights {name}/{tag}: {exc}") from None
    if not path:
        raise EncoderLoadError(f"no download location known for weights {name}/{tag}")
    return path, quick_gelu


def resolve_encoder(model: str, pretrained: str | None) -> EncoderSpec:
    """Resolve a model name and its weights to an :class:`EncoderSpec` (nothing is built)."""
    family, name, cfg = resolve_name(model)
    pre = str(pretrained or "none")
    if is_random(pre):
        return EncoderSpec(family, name, "none", None, False, cfg)
    path = Path(pre).expanduser()
    if path.is_file():
        return EncoderSpec(family, name, str(path.resolve()), str(path.resolve()), False, cfg)
    if family == "viclip":
        raise EncoderLoadError(
            f"ViCLIP weights {pre!r} are not a local file; pass the released checkpoint (.pth or "
            ".safetensors) as the pretrained weights, or none for random weights"
        )
    checkpoint, quick_gelu = _open_clip_tag(name, pre)
    return EncoderSpec(family, name, pre, checkpoint, quick_gelu, cfg)


# ---------------------------------------------------------------------- building


def build_open_clip(spec: EncoderSpec, seed: int = RANDOM_SEED, device: str = "cpu") -> Any:
    """The open_clip model of ``spec`` (eval mode, fp32, every parameter frozen)."""
    import open_clip
    import torch

    previous = logging.root.manager.disable
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            if spec.checkpoint is None:  # random weights asked for: no "not pretrained" warning
                logging.disable(logging.WARNING)
            model = open_clip.create_model(
                spec.name, pretrained=spec.checkpoint, force_quick_gelu=spec.quick_gelu, device=device
            )
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad config or checkpoint
            raise EncoderLoadError(
                f"cannot build backbone {spec.name} with weights {spec.pretrained}: {exc}"
            ) from None
        finally:
            logging.disable(previous)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_viclip_state(spec: EncoderSpec) -> dict[str, Any] | None:
    """The state dict of the checkpoint of a ViCLIP spec (None for random weights)."""
    if spec.checkpoint is None:
        return None
    from descgen.viclip_text import read_checkpoint

    try:
        return read_checkpoint(spec.checkpoint)
    except Exception as exc:  # noqa: BLE001 - unreadable or foreign file
        raise EncoderLoadError(f"cannot read ViCLIP checkpoint {spec.checkpoint}: {exc}") from None


def load_part(module: Any, state: dict[str, Any] | None, prefix: str, spec: EncoderSpec) -> None:
    """Load ``prefix``-ed keys of a ViCLIP state into ``module``; one message names a bad key."""
    if state is None:
        return
    from descgen.viclip_text import load_part as _load

    try:
        _load(module, state, prefix, spec.checkpoint or "")
    except KeyError as exc:
        raise EncoderLoadError(str(exc.args[0])) from None


def build_viclip_text(
    spec: EncoderSpec, seed: int = RANDOM_SEED, state: dict[str, Any] | None = None, device: str = "cpu"
) -> Any:
    """ViCLIP's text tower of ``spec`` (eval mode, frozen). ``state``: the checkpoint, if read."""
    import torch

    from descgen.viclip_text import ViCLIPText

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = ViCLIPText(spec.config["text_cfg"])
    state = state if state is not None else load_viclip_state(spec)
    load_part(tower, state, "text_encoder.", spec)
    tower.eval().to(device)
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower


def tokenizer_for(spec: EncoderSpec, context: int | None = None) -> Any:
    """The tokenizer of a model: CLIP's BPE for both families (ViCLIP: context 32, longer texts
    truncated with the end-of-text token kept last)."""
    import open_clip

    if spec.family == "viclip":
        return open_clip.SimpleTokenizer(context_length=context or spec.config["text_cfg"]["context_length"])
    if context is None:
        return open_clip.get_tokenizer(spec.name)
    return open_clip.get_tokenizer(spec.name, context_length=context)


def load_text_tower(spec: EncoderSpec, device: str = "cpu") -> Any:
    """The module whose text weights define the encoder: the whole open_clip model (its text
    tower is read from it), or ViCLIP's text tower."""
    if spec.family == "viclip":
        return build_viclip_text(spec, device=device)
    return build_open_clip(spec, device=device)
