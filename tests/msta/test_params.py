"""``msta params`` and configuration loading (presets, defaults chains, overrides, errors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from msta import config as config_module
from msta.config import Config, ConfigError, load_config, save_config


def run_cli_process(*args: str) -> subprocess.CompletedProcess:
    """``msta ARGS`` in a child process, through the console script's entry point."""
    return subprocess.run(
        [sys.executable, "-c", "from msta.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


@pytest.fixture
def run_cli():
    """``msta ARGS`` in this process (exit code, stdout and stderr as in a child process)."""
    from typer.testing import CliRunner

    from msta.cli import app

    def run(*args: str) -> subprocess.CompletedProcess:
        res = CliRunner().invoke(app, list(args), catch_exceptions=False)
        return subprocess.CompletedProcess(["msta", *args], res.exit_code, res.stdout, res.stderr)

    return run


# --------------------------------------------------------------------------- msta params


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["adapter.dim=128", "adapter.start=8", "adapter.end=12"], 1_744_000),
        (["adapter.dim=256", "adapter.start=1", "adapter.end=12"], 8_712_192),
    ],
)
def test_vit_b16_trainable_counts_match_the_paper(overrides, expected, run_cli):
    args = ["params", "--json"]
    for o in overrides:
        args += ["--set", o]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["trainable"] == expected
    # CLIP ViT-B/16 itself: 149,620,737 parameters
    assert out["total"] == 149_620_737 + expected
    assert out["share"] == pytest.approx(expected / out["total"])


def test_params_on_the_tiny_backbone(tiny_clip_config, run_cli):
    sets = [f"model.backbone={tiny_clip_config}", "adapter.start=1", "adapter.end=2", "adapter.dim=32"]
    args = ["params"]
    for s in sets:
        args += ["--set", s]
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    per_layer = (64 * 32 + 32) + (32 * 64 + 64) + (96 * 32 + 32) + (32 * 96 + 96) + (32 * 32 + 32) + (96 * 4)
    assert out["trainable"] == 2 * per_layer
    assert set(out) >= {"trainable", "total", "share"}
    text = run_cli(*args, "--set", "adapter.branches=none")
    assert text.returncode == 0
    assert "trainable 0 /" in text.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "adapter.dimm=3"], "unknown key 'adapter.dimm'"),
        (["--set", "adapter.branches=all"], "adapter.branches"),
        (["--set", "model.backbone=ViT-Q-99"], "unknown backbone"),
        (["--config", "no-such-preset"], "neither a file nor a preset"),
    ],
)
def test_params_user_errors_are_one_line(args, message, run_cli):
    proc = run_cli("params", *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_params_user_error_in_a_process_has_no_traceback():
    proc = run_cli_process("params", "--set", "adapter.dimm=3")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ")
    assert "unknown key 'adapter.dimm'" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- configuration


def test_defaults_follow_the_method_description():
    cfg = load_config()
    assert cfg.model.backbone == "ViT-B-16" and cfg.model.pretrained == "openai" and cfg.model.frames == 8
    assert cfg.model.prompt_template == "a video of {}."
    a = cfg.adapter
    assert (a.dim, a.start, a.end, a.scale, a.grad_scale, a.temporal, a.shared, a.branches) == (
        256,
        8,
        12,
        0.005,
        True,
        True,
        True,
        "both",
    )
    assert cfg.loss.consistency_weight == 1.0
    o = cfg.optim
    assert (o.lr, o.epochs, o.warmup_epochs, o.batch_size, o.weight_decay) == (1e-3, 11, 5, 32, 1e-3)
    assert o.betas == (0.9, 0.98) and o.eps == 1e-8 and o.min_lr_ratio == 0.01
    assert cfg.data.hflip is None and cfg.data.decoder == "pyav" and cfg.data.val_lists == []


def test_overrides_parse_yaml_values():
    cfg = load_config(
        [],
        [
            "optim.lr=8e-3",
            "optim.betas=[0.9, 0.999]",
            "adapter.temporal=false",
            "data.hflip=null",
            "data.val_lists=[a.txt, b.txt]",
            "model.pretrained=none",
            "run.out=runs/x=y",
        ],
    )
    assert cfg.optim.lr == 8e-3 and cfg.optim.betas == (0.9, 0.999)
    assert cfg.adapter.temporal is False and cfg.data.hflip is None
    assert cfg.data.val_lists == ["a.txt", "b.txt"] and cfg.model.pretrained == "none"
    assert cfg.run.out == "runs/x=y"


def test_files_merge_in_order_with_defaults_chains(tmp_path):
    (tmp_path / "base.yaml").write_text("adapter:\n  dim: 128\n  start: 1\noptim:\n  lr: 2e-3\n")
    (tmp_path / "mid.yaml").write_text("defaults: [base.yaml]\nadapter:\n  start: 4\n")
    (tmp_path / "top.yaml").write_text("optim:\n  epochs: 3\n")
    cfg = load_config([tmp_path / "mid.yaml", tmp_path / "top.yaml"], ["adapter.end=10"])
    assert (cfg.adapter.dim, cfg.adapter.start, cfg.adapter.end) == (128, 4, 10)
    assert cfg.optim.lr == 2e-3 and cfg.optim.epochs == 3 and cfg.optim.batch_size == 32


def test_preset_names_resolve_in_the_package(tmp_path, monkeypatch):
    presets = tmp_path / "presets"
    (presets / "protocols").mkdir(parents=True)
    (presets / "datasets").mkdir()
    (presets / "protocols" / "fewshot.yaml").write_text("defaults: [k400]\noptim:\n  epochs: 50\n")
    (presets / "datasets" / "k400.yaml").write_text("data:\n  classes: k400\n")
    monkeypatch.setattr(config_module, "PRESETS_DIR", presets)
    cfg = load_config(["fewshot"])
    assert cfg.optim.epochs == 50 and cfg.data.classes == "k400"
    assert config_module.preset_names() == ["fewshot", "k400"]
    (presets / "datasets" / "fewshot.yaml").write_text("{}\n")
    with pytest.raises(ConfigError, match="ambiguous"):
        load_config(["fewshot"])
    assert load_config(["protocols/fewshot"]).optim.epochs == 50


def test_shipped_presets_load():
    for name in config_module.preset_names():
        assert isinstance(load_config([name]), Config)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("model:\n  backbon: x\n", [], "unknown key 'model.backbon'"),
        ("modle: {}\n", [], "unknown key 'modle'"),
        ("- a\n", [], "must be a mapping"),
        ("a: [\n", [], "not valid YAML"),
        ("{}", ["adapter.start=9", "adapter.end=3"], "adapter.end (3) is before adapter.start (9)"),
        ("{}", ["adapter.dim=0"], "adapter.dim"),
        ("{}", ["model.prompt_template=a video"], "'{}'"),
        ("{}", ["eval.views=3by3"], "CLIPSxCROPS"),
        ("{}", ["adapter"], "key=value"),
        ("{}", ["adapter.dim=3", "adapter.dim.x=1"], "not a section"),
        ("defaults: [self.yaml]\n", [], "cycle"),
    ],
)
def test_config_errors_name_the_problem(tmp_path, text, overrides, message):
    path = tmp_path / "self.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config([path], overrides)
    assert message in str(info.value)


def test_yaml_round_trip(tmp_path):
    cfg = load_config([], ["adapter.dim=64", "optim.betas=[0.8, 0.9]", "data.hflip=false"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(path.read_text())["adapter"]["dim"] == 64
    assert load_config([path]) == cfg
    assert cfg.with_overrides(["adapter.dim=32"]).adapter.dim == 32 and cfg.adapter.dim == 64
