"""Gradient accumulation: two micro-batches of 2 give the step of one batch of 4."""

from __future__ import annotations

import pytest

from . import make_synth

pytestmark = pytest.mark.slow


def test_accumulated_steps_equal_full_batch_steps(tmp_path):
    from msta.checkpoint import load_weights
    from msta.config import load_config
    from msta.run import read_metrics
    from msta.train import train

    data = make_synth(tmp_path / "data", videos_per_class=2, val_per_class=1)
    common = [
        f"data.root={data}", "optim.epochs=1", "optim.batch_size=4", "optim.warmup_epochs=0",
        "loss.consistency_weight=0", "run.log_every_steps=1", "data.num_workers=0",
        # A large epsilon keeps Adam from turning float noise in near-zero gradients into whole steps.
        "optim.eps=1e-3",
    ]  # fmt: skip
    runs = {}
    for accum in (1, 2):
        out = tmp_path / f"accum{accum}"
        cfg = load_config(["synth"], [*common, f"optim.accum_steps={accum}", f"run.out={out}"])
        summary = train(cfg, progress=False)
        assert summary["global_step"] == 2
        runs[accum] = out
    w1, _ = load_weights(runs[1])
    w2, _ = load_weights(runs[2])
    # A wrong accumulation (a missing 1/accum, a step per micro-batch) moves weights by whole steps
    # (lr = 0.01).
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4
    l1 = [r["loss"] for r in read_metrics(runs[1]) if r["type"] == "train"]
    l2 = [r["loss"] for r in read_metrics(runs[2]) if r["type"] == "train"]
    assert l1 == pytest.approx(l2, rel=1e-4)
