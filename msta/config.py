"""Configuration: pydantic models, YAML presets and ``--set key=value`` overrides.

A configuration is assembled from

1. the defaults below (MSTA on CLIP ViT-B/16, see the method description),
2. YAML files merged in order; a name without a path (``fewshot``, ``k400``) resolves to a preset
   shipped in :mod:`msta.presets`; a YAML file may name other presets or files to start from with
   ``defaults: [name, ...]`` (merged first, the file itself on top),
3. ``key=value`` overrides with dotted keys (``adapter.dim=128``); values are parsed as YAML
   (``true``, ``[0.9, 0.98]``, ``1e-3``, ``null``).

Unknown keys and bad values raise :class:`ConfigError` with one message naming the key.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from msta.errors import MstaError
from msta.views import parse_views

PRESETS_DIR = Path(__file__).resolve().parent / "presets"


class ConfigError(MstaError, ValueError):
    """A configuration cannot be used. The message is meant for the user, as is."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelCfg(_Section):
    # open_clip model name (ViT-B-16), a shipped config (clip-tiny; ViCLIP: viclip-b16, viclip-l14,
    # viclip-tiny) or a model-config JSON path; the backbone brings its own image size and input statistics
    backbone: str = "ViT-B-16"
    pretrained: str = "openai"  # open_clip tag, local checkpoint path, or "none" (random weights)
    frames: int = Field(8, ge=1)
    prompt_template: str = "a video of {}."

    @field_validator("prompt_template")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{}" not in v:
            raise ValueError("must contain '{}' where the class name goes")
        return v


class AdapterCfg(_Section):
    dim: int = Field(256, ge=1)  # bottleneck width d
    start: int = Field(8, ge=1)  # first block with an adapter (blocks numbered from 1)
    end: int = Field(12, ge=1)  # last block with an adapter (inclusive)
    scale: float = Field(0.005, ge=0.0)  # lambda
    grad_scale: bool = True  # adapter parameters get gradients as if unscaled (MMA)
    temporal: bool = True  # depthwise temporal convolution in the video adapters
    shared: bool = True  # one shared projection per layer used by both branches
    branches: Literal["both", "text", "video", "none"] = "both"  # "none": adapters off

    @model_validator(mode="after")
    def _range(self) -> AdapterCfg:
        if self.end < self.start:
            raise ValueError(f"adapter.end ({self.end}) is before adapter.start ({self.start})")
        return self


class LossCfg(_Section):
    consistency_weight: float = Field(1.0, ge=0.0)  # alpha


class DataCfg(_Section):
    root: str = "."  # video root; list paths are relative to it
    classes: str | None = None  # class-list file or built-in dataset name
    train_list: str | None = None
    val_list: str | None = None
    val_lists: list[str] = Field(default_factory=list)  # extra evaluation splits
    base_classes: str | None = None  # base-to-novel: class-list file or comma-separated names
    novel_classes: str | None = None  # base-to-novel: class-list file or comma-separated names
    hflip: bool | None = None  # None: automatic (off for ssv2, whose classes name directions)
    num_workers: int = Field(2, ge=0)
    decoder: Literal["pyav", "decord", "frames"] = "pyav"
    data_dir: str | None = None  # data directory; None: $MSTA_DATA_DIR or the default
    input_size: int | None = Field(None, ge=1)  # None: the backbone's image size


class OptimCfg(_Section):
    lr: float = Field(1e-3, gt=0.0)
    epochs: int = Field(11, ge=0)
    warmup_epochs: float = Field(5, ge=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(1e-3, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-8, gt=0.0)
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)
    accum_steps: int = Field(1, ge=1)
    # Per-step learning rate: timm (cosine over all steps, linear warm-up from 0 in place of it, as
    # in the authors' logs) or warmup_cosine (warm-up, then a cosine over the remaining steps).
    schedule: Literal["timm", "warmup_cosine"] = "timm"


class RunCfg(_Section):
    out: str = "runs/default"
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    # bf16: autocast on CUDA; fp32: no autocast. Training, validation, eval, predict and compare all
    # follow it (msta.run.autocast); the CPU always runs fp32.
    precision: Literal["bf16", "fp32"] = "bf16"
    grad_checkpointing: bool = False
    tensorboard: bool = False
    # Training loop (trainer): checkpoint every K optimizer steps (0: at the end of each epoch only),
    # log every K optimizer steps.
    save_every_steps: int = Field(0, ge=0)
    log_every_steps: int = Field(10, ge=1)


class EvalSplitCfg(_Section):
    name: str
    list: str
    classes: str | None = None
    root: str | None = None
    group: str | None = None


class EvalCfg(_Section):
    views: str = "1x1"  # CLIPSxCROPS
    batch_size: int | None = Field(None, ge=1)  # None: optim.batch_size
    # Trainer: validate every K epochs (0: only after the last epoch).
    every: int = Field(1, ge=0)
    # Evaluation splits beyond data.val_list: name, list file, class list (default data.classes),
    # video root (default data.root); splits sharing a group are averaged (mean and std).
    splits: list[EvalSplitCfg] = Field(default_factory=list)
    # Base-to-novel: video list of the novel classes (labels index data.novel_classes).
    novel_list: str | None = None
    # Zero-shot targets of a dataset preset (msta eval RUN --target NAME).
    zeroshot: list[EvalSplitCfg] = Field(default_factory=list)

    @field_validator("views")
    @classmethod
    def _views(cls, v: str) -> str:
        parse_views(v)
        return v


class DescriptionsCfg(_Section):
    cache: str | None = None  # SQLite description cache
    set: str | None = None  # description-set id prefix
    backend: str | None = None
    model: str | None = None
    prompt: str | None = None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    model: ModelCfg = Field(default_factory=ModelCfg)
    adapter: AdapterCfg = Field(default_factory=AdapterCfg)
    loss: LossCfg = Field(default_factory=LossCfg)
    data: DataCfg = Field(default_factory=DataCfg)
    optim: OptimCfg = Field(default_factory=OptimCfg)
    run: RunCfg = Field(default_factory=RunCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    descriptions: DescriptionsCfg = Field(default_factory=DescriptionsCfg)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False)

    def with_overrides(self, overrides: Sequence[str]) -> Config:
        """A copy with ``key=value`` overrides applied (validated)."""
        data = self.to_dict()
        for item in overrides:
            _apply_override(data, item)
        return _validate(data, "overrides")


# --------------------------------------------------------------------------- YAML parsing


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` (no dot) as a float, as people write learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parse one override value as YAML (an empty value is the empty string)."""
    if text.strip() == "":
        return ""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {text!r}: {exc}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of sections, not {type(data).__name__}")
    return data


def preset_names() -> list[str]:
    """Names of the YAML presets shipped with the package."""
    return sorted({p.stem for p in PRESETS_DIR.rglob("*.yaml")})


def resolve_config_path(name: str | Path, base: Path | None = None) -> Path:
    """A config file path: an existing file (absolute, relative to ``base`` or the working
    directory), else a shipped preset of that name (``fewshot`` or ``protocols/fewshot``)."""
    p = Path(name)
    candidates = []
    if base is not None and not p.is_absolute():
        candidates.append(base / p)
    candidates.append(p)
    for c in candidates:
        if c.is_file():
            return c.resolve()
    stem = str(name)
    if stem.endswith((".yaml", ".yml")):
        stem = stem.rsplit(".", 1)[0]
    direct = PRESETS_DIR / f"{stem}.yaml"
    if direct.is_file():
        return direct
    matches = sorted(PRESETS_DIR.rglob(f"{Path(stem).name}.yaml"))
    if "/" not in stem and len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        rel = ", ".join(str(m.relative_to(PRESETS_DIR).with_suffix("")) for m in matches)
        raise ConfigError(f"preset name {str(name)!r} is ambiguous: {rel}")
    known = ", ".join(preset_names()) or "none"
    raise ConfigError(f"config {str(name)!r} is neither a file nor a preset (presets: {known})")


def _deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_tree(path: Path, stack: tuple[Path, ...]) -> dict[str, Any]:
    if path in stack:
        chain = " -> ".join(str(p) for p in (*stack, path))
        raise ConfigError(f"config defaults form a cycle: {chain}")
    data = _read_yaml(path)
    defaults = data.pop("defaults", None) or []
    if isinstance(defaults, str):
        defaults = [defaults]
    if not isinstance(defaults, list) or not all(isinstance(d, str) for d in defaults):
        raise ConfigError(f"config {path}: 'defaults' must be a list of preset names or files")
    merged: dict[str, Any] = {}
    for d in defaults:
        merged = _deep_merge(merged, _load_tree(resolve_config_path(d, path.parent), (*stack, path)))
    return _deep_merge(merged, data)


def _apply_override(data: dict[str, Any], item: str) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like key=value (e.g. adapter.dim=128)")
    key, _, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise ConfigError(f"override {item!r} has an empty key")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = nxt
    node[parts[-1]] = parse_value(raw)


def _format_error(exc: ValidationError, origin: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        elif not loc:
            lines.append(str(err["msg"]).removeprefix("Value error, "))
        else:
            value = err.get("input")
            msg = str(err["msg"]).removeprefix("Value error, ")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{loc}: {msg}{shown}")
    return f"invalid configuration ({origin}): " + "; ".join(lines)


def _validate(data: dict[str, Any], origin: str) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, origin)) from None


def load_config(paths: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> Config:
    """Defaults, then each YAML file or preset in ``paths``, then ``key=value`` overrides."""
    data: dict[str, Any] = {}
    names = []
    for p in paths:
        path = resolve_config_path(p)
        names.append(str(p))
        data = _deep_merge(data, _load_tree(path, ()))
    overrides = list(overrides)
    for item in overrides:
        _apply_override(data, item)
    origin = ", ".join(names) if names else "defaults"
    if overrides:
        origin += " + --set"
    return _validate(data, origin)


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved configuration as YAML (atomically)."""
    from descgen.fileio import write_text_atomic

    return write_text_atomic(path, cfg.to_yaml())
