"""Fast checks of the trainer's parts: schedule, data order, checkpoints, RNG, paths, presets."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from msta import checkpoint as ckpt
from msta.config import PRESETS_DIR, load_config
from msta.distributed import ShardedOrder
from msta.run import expand
from msta.train import TrainState, lr_factor

# --------------------------------------------------------------------------- schedule


def test_lr_schedule_warmup_then_cosine_to_min_ratio():
    warm, total, ratio = 10, 110, 0.01
    f = [lr_factor(s, warm, total, ratio, "warmup_cosine") for s in range(total)]
    assert f[0] == pytest.approx(0.1)
    assert f[9] == pytest.approx(1.0)
    assert all(b > a for a, b in zip(f[:9], f[1:10], strict=True))  # linear ramp up
    assert f[10] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(f[10:], f[11:], strict=False))  # then decreasing
    assert f[60] == pytest.approx(ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor(total, warm, total, ratio, "warmup_cosine") == pytest.approx(ratio)


def test_lr_schedule_without_warmup_starts_at_peak():
    assert lr_factor(0, 0, 100, 0.01, "warmup_cosine") == pytest.approx(1.0)


# --------------------------------------------------------------------------- data order


@pytest.mark.parametrize("world", [2, 4])
def test_rank_batches_union_is_the_single_process_batch(world):
    n, global_batch = 37, 8
    single = ShardedOrder(n, 1, 0, global_batch, seed=3)
    ranks = [ShardedOrder(n, world, r, global_batch // world, seed=3) for r in range(world)]
    for epoch in range(3):
        ref = list(single.local_batches(epoch))
        per_rank = [list(o.local_batches(epoch)) for o in ranks]
        assert all(len(b) == len(ref) == n // global_batch for b in per_rank)
        for k, batch in enumerate(ref):
            assert sorted(i for r in range(world) for i in per_rank[r][k]) == sorted(batch)


def test_data_order_depends_on_seed_and_epoch_only_and_resumes_mid_epoch():
    o = ShardedOrder(50, 1, 0, 5, seed=1)
    again = ShardedOrder(50, 1, 0, 5, seed=1)
    assert list(o.local_batches(2)) == list(again.local_batches(2))
    assert list(o.local_batches(0)) != list(o.local_batches(1))
    assert list(o.local_batches(0)) != list(ShardedOrder(50, 1, 0, 5, seed=2).local_batches(0))
    full = list(o.local_batches(4))
    assert list(o.local_batches(4, skip_batches=3)) == full[3:]
    # Every sample at most once per epoch.
    flat = [i for b in full for i in b]
    assert len(flat) == len(set(flat)) == 50


def test_data_order_pads_when_not_dropping_last():
    o = ShardedOrder(10, 2, 1, 4, seed=0, drop_last=False)
    batches = list(o.local_batches(0))
    assert len(batches) == 2 and all(len(b) == 4 for b in batches)


# --------------------------------------------------------------------------- checkpoints


def _weights(v: float) -> dict[str, torch.Tensor]:
    return {"adapters.1.w": torch.full((3, 2), v), "adapters.1.b": torch.arange(4.0) * v}


def test_checkpoint_save_load_last_and_best(tmp_path):
    run = tmp_path / "run"
    ckpt.save(run, _weights(1.0), {"state": {"x": 1}}, {"epoch": 1, "global_step": 5}, names=("last", "best"))
    ckpt.save(run, _weights(2.0), {"state": {"x": 2}}, {"epoch": 2, "global_step": 10}, names=("last",))
    w, info = ckpt.load_weights(run, "last")
    assert torch.equal(w["adapters.1.w"], torch.full((3, 2), 2.0)) and info["global_step"] == 10
    w, info = ckpt.load_weights(run, "best")
    assert torch.equal(w["adapters.1.b"], torch.arange(4.0)) and info["epoch"] == 1
    assert ckpt.load_trainer_state(run, "last")["state"] == {"x": 2}
    ckpt.save(
        run, _weights(3.0), {"state": {"x": 3}}, {"epoch": 3, "global_step": 15}, names=("last", "best")
    )
    # Only the directories a pointer names are kept (last, best and the previous last).
    dirs = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    assert dirs == ["step-00000010", "step-00000015"]


def test_checkpoint_interrupted_write_keeps_previous(tmp_path):
    run = tmp_path / "run"
    ckpt.save(run, _weights(1.0), {"state": {}}, {"epoch": 0, "global_step": 2})
    # What a kill during a later save leaves behind: a temporary directory and an unnamed step.
    (run / "checkpoints" / ".tmp-abc").mkdir()
    (run / "checkpoints" / ".tmp-abc" / ckpt.WEIGHTS).write_bytes(b"partial")
    (run / "checkpoints" / "step-00000004").mkdir()
    w, info = ckpt.load_weights(run, "last")
    assert info["global_step"] == 2 and torch.equal(w["adapters.1.w"], torch.ones(3, 2))
    ckpt.save(run, _weights(5.0), {"state": {}}, {"epoch": 0, "global_step": 4})
    w, info = ckpt.load_weights(run, "last")
    assert info["global_step"] == 4 and torch.equal(w["adapters.1.w"], torch.full((3, 2), 5.0))
    assert not (run / "checkpoints" / ".tmp-abc").exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no 'best' checkpoint"):
        ckpt.load_weights(tmp_path, "best")


def test_rng_state_round_trip_through_a_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    state = ckpt.rng_state()
    ckpt.save(tmp_path, _weights(0.0), {"rng": [state]}, {"global_step": 1})
    expect = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.set_rng_state(ckpt.load_trainer_state(tmp_path)["rng"][0])
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[0] == expect[0] and got[1] == expect[1] and torch.equal(got[2], expect[2])


def test_train_state_round_trip():
    s = TrainState(epoch=2, step_in_epoch=3, global_step=13, best_top1=0.5, best_epoch=1, skipped=2)
    assert TrainState.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# --------------------------------------------------------------------------- paths and presets


def test_paths_expand_data_dir_and_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MSTA_DATA_DIR", str(tmp_path / "dd"))
    cfg = load_config([], ["data.root=/videos"])
    assert expand("${data_dir}/splits/a.txt", cfg) == str(tmp_path / "dd" / "splits" / "a.txt")
    assert expand("${root}/train.txt", cfg) == "/videos/train.txt"
    cfg = load_config([], [f"data.data_dir={tmp_path / 'other'}"])
    assert expand("${data_dir}/x", cfg) == str(tmp_path / "other" / "x")
    assert expand(None, cfg) is None


def test_shipped_backbone_name_resolves_to_its_config():
    import json

    import open_clip

    from msta.backbone import BackboneError, resolve_model_name

    assert resolve_model_name("clip-tiny") == "clip-tiny"
    shipped = json.loads((PRESETS_DIR.parents[1] / "descgen" / "models" / "clip-tiny.json").read_text())
    assert open_clip.get_model_config("clip-tiny") == shipped
    assert resolve_model_name("ViT-B-16") == "ViT-B-16"
    with pytest.raises(BackboneError, match="unknown backbone"):
        resolve_model_name("clip-nonexistent")


PROTOCOLS = {
    "fewshot": (8, 12, 32, 1e-3, 50),
    "base2novel": (1, 12, 32, 1e-3, 11),
    "zeroshot": (8, 12, 256, 8e-3, 10),
    "supervised": (1, 12, 256, 8e-3, 30),
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_protocol_presets_follow_the_spec_table(name):
    start, end, batch, lr, epochs = PROTOCOLS[name]
    cfg = load_config([name])
    assert (cfg.adapter.start, cfg.adapter.end) == (start, end)
    assert cfg.optim.batch_size == batch and cfg.optim.lr == pytest.approx(lr) and cfg.optim.epochs == epochs
    assert cfg.optim.warmup_epochs == 5
    assert cfg.optim.betas == (0.9, 0.98) and cfg.optim.weight_decay == pytest.approx(1e-3)


DATASET_LISTS = {
    "hmdb51": ("hmdb51", True),
    "ucf101": ("ucf101", True),
    "ssv2": ("ssv2", False),
    "k400": ("k400", True),
    "k600": ("k600", True),
}


@pytest.mark.parametrize("name", sorted(DATASET_LISTS))
def test_dataset_presets_point_at_existing_split_files(name, shared_data):
    from msta.run import class_names, hflip_for

    classes, hflip = DATASET_LISTS[name]
    cfg = load_config([name], [f"data.data_dir={shared_data}"])
    assert hflip_for(cfg) is hflip
    names = class_names(cfg.data.classes, cfg)
    assert len(names) > 0
    lists = [
        cfg.data.train_list,
        cfg.data.val_list,
        *cfg.data.val_lists,
        *(s.list for s in cfg.eval.zeroshot),
    ]
    # The full Kinetics-400 training list is not part of the reference data (its README says so).
    lists = [x for x in lists if x and not (name == "k400" and x == cfg.data.train_list)]
    assert lists, "a dataset preset names at least one video list"
    for lst in lists:
        assert Path(expand(lst, cfg)).is_file(), lst


def test_protocol_and_dataset_presets_compose(shared_data):
    from msta.run import class_names, train_classes_spec

    cfg = load_config(["hmdb51", "base2novel"], [f"data.data_dir={shared_data}"])
    assert cfg.adapter.start == 1 and cfg.data.classes == "hmdb51"
    base = class_names(train_classes_spec(cfg), cfg)
    novel = class_names(cfg.data.novel_classes, cfg)
    assert (len(base), len(novel)) == (26, 25) and not set(base) & set(novel)
    for lst in (cfg.data.train_list, cfg.data.val_list, cfg.eval.novel_list):
        assert Path(expand(lst, cfg)).is_file(), lst
    cfg = load_config(["ssv2", "fewshot"], [f"data.data_dir={shared_data}"])
    assert cfg.optim.epochs == 50 and cfg.data.hflip is False


def test_dataset_placeholder_needs_a_builtin_dataset():
    from msta.run import TrainError

    cfg = load_config(["base2novel"], ["data.classes=my_classes.csv"])
    with pytest.raises(TrainError, match="dataset preset before the protocol preset"):
        expand(cfg.data.train_list, cfg)


def test_zero_shot_targets_resolve_their_splits(shared_data):
    from msta.evaluate import target_splits

    cfg = load_config(["k400", "zeroshot"], [f"data.data_dir={shared_data}"])
    specs = target_splits(cfg, "k600", "/videos/k600")
    assert [s.name for s in specs] == ["split1", "split2", "split3"] and {s.group for s in specs} == {"k600"}
    assert all(
        Path(s.list).is_file() and Path(s.classes).is_file() and s.root == "/videos/k600" for s in specs
    )


def test_tensorboard_is_optional(tmp_path):
    from msta.train import MetricsLog

    messages: list[str] = []
    log = MetricsLog(tmp_path, enabled=True, tensorboard=True, log=messages.append)
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        assert log.tb is None and any("not installed" in m for m in messages)
    else:
        assert log.tb is not None
    log.write({"type": "train", "global_step": 1, "loss": 0.5})
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == 0.5
