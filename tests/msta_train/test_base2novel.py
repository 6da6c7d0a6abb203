"""Base-to-novel: train on the base classes, evaluate base and novel with each set's own class text
features (recomputed per class set, never reused), report the harmonic mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import class_list, make_synth

pytestmark = pytest.mark.slow


def _write_split(data: Path, out: Path) -> dict[str, str]:
    names = class_list(data)
    base, novel = names[:2], names[2:]
    out.mkdir()
    (out / "base.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(base)))
    (out / "novel.csv").write_text("id,name\n" + "".join(f"{i},{n}\n" for i, n in enumerate(novel)))

    def relabel(src: str, keep: list[str], dst: str) -> None:
        lines = []
        for line in (data / src).read_text().splitlines():
            path, label = line.rsplit(" ", 1)
            name = names[int(label)]
            if name in keep:
                lines.append(f"{path} {keep.index(name)}\n")
        (out / dst).write_text("".join(lines))

    relabel("train.txt", base, "base_train.txt")
    relabel("val.txt", base, "base_val.txt")
    relabel("val.txt", novel, "novel_val.txt")
    return {
        "data.classes": str(data / "classes.csv"),
        "data.base_classes": str(out / "base.csv"),
        "data.novel_classes": str(out / "novel.csv"),
        "data.train_list": str(out / "base_train.txt"),
        "data.val_list": str(out / "base_val.txt"),
        "eval.novel_list": str(out / "novel_val.txt"),
    }


def test_base_and_novel_class_sets_are_switched(tmp_path, monkeypatch):
    from msta import evaluate
    from msta.config import load_config
    from msta.model import MSTA
    from msta.train import train

    data = make_synth(tmp_path / "data")
    keys = _write_split(data, tmp_path / "split")
    run = tmp_path / "run"
    overrides = [f"{k}={v}" for k, v in keys.items()] + [
        f"data.root={data}", f"run.out={run}", "optim.epochs=1", "optim.batch_size=4",
        "loss.consistency_weight=0", "data.num_workers=0",
    ]  # fmt: skip
    cfg = load_config(["synth"], overrides)
    summary = train(cfg, progress=False)
    names = class_list(data)
    assert json.loads((run / "classes.json").read_text())["classes"] == names[:2]
    assert summary["global_step"] == 2  # 8 base videos, batch 4

    calls: list[tuple[str, ...]] = []
    original = MSTA.encode_class_prompts

    def spy(self, class_names):
        calls.append(tuple(class_names))
        return original(self, class_names)

    monkeypatch.setattr(MSTA, "encode_class_prompts", spy)
    report = evaluate.evaluate_run(run, plots=False)
    assert set(report["splits"]) == {"base", "novel"}
    assert report["splits"]["base"]["classes"] == names[:2]
    assert report["splits"]["novel"]["classes"] == names[2:]
    # Each class set's text features were computed for that set.
    assert tuple(names[:2]) in calls and tuple(names[2:]) in calls
    b, n = report["splits"]["base"]["top1"], report["splits"]["novel"]["top1"]
    hm = report["base_to_novel"]["hm"]
    assert report["base_to_novel"]["base"] == b and report["base_to_novel"]["novel"] == n
    assert hm == pytest.approx(2 * b * n / (b + n) if b + n else 0.0)
    assert report["top1"] == b  # the run's validation list is the base split
    assert report["splits"]["novel"]["n"] == 4 and report["splits"]["base"]["n"] == 4

    # The novel result equals scoring the novel videos against the novel classes directly.
    monkeypatch.setattr(MSTA, "encode_class_prompts", original)
    model, _ = evaluate.load_run_model(run, cfg, "last", "cpu")
    from msta.run import make_dataset, read_list

    items = read_list(keys["eval.novel_list"], cfg, "novel")
    ds = make_dataset(cfg, items, False, 64)
    direct = evaluate.evaluate_split(model, ds, names[2:], precision=cfg.run.precision)
    assert direct["top1"] == n and direct["per_class"] == report["splits"]["novel"]["per_class"]
