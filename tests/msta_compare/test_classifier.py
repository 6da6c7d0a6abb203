"""``--classifier descriptions``: the ensemble weights, computed by hand, and their logits."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from msta.classifier import ClassifierSpec, class_weights, ensemble_weights
from msta.errors import MstaError
from tests.msta_train import class_list

from .conftest import synth_overrides


def test_ensemble_weights_by_hand():
    prompt = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    spatial = torch.tensor([[[0.0, 3.0]], [[0.0, 1.0]]])  # N = 1
    temporal = torch.tensor([[[3.0, 0.0]], [[-5.0, 0.0]]])
    w = ensemble_weights(prompt, spatial, temporal)
    # class 0: unit vectors (1,0), (0,1), (1,0) -> mean (2/3, 1/3) -> (2, 1)/sqrt(5)
    # class 1: unit vectors (0,1), (0,1), (-1,0) -> mean (-1/3, 2/3) -> (-1, 2)/sqrt(5)
    r5 = math.sqrt(5)
    assert torch.allclose(w, torch.tensor([[2 / r5, 1 / r5], [-1 / r5, 2 / r5]]), atol=1e-6)


def _tiny_model(synth):
    from msta.config import load_config
    from msta.run import build_seeded_model

    cfg = load_config(["synth"], [f"data.root={synth}", "adapter.branches=none", "run.device=cpu"])
    return build_seeded_model(cfg).eval()


def test_descriptions_change_the_logits_as_computed_by_hand(synth, two_sets):
    from descgen.encode import TextEncoder, encode_texts
    from descgen.store import Store

    cache, set_a, _ = two_sets
    names = class_list(synth)
    model = _tiny_model(synth)
    plain, info = class_weights(model, names)
    assert info == {"kind": "names"}
    weights, info = class_weights(model, names, ClassifierSpec("descriptions", str(cache), set_a[:8]))
    assert info["kind"] == "descriptions" and info["set"] == set_a

    # By hand: the frozen text encoder's embeddings of each class's sentences, read from the store.
    frozen = model.frozen_text_backbone()
    enc = TextEncoder.from_model(frozen.model, model.tokenizer, frozen.model_name, frozen.pretrained)
    assert info["encoder"] == enc.fingerprint
    with Store(cache, readonly=True) as store:
        descs = store.descriptions(set_a, names)
    with torch.no_grad():
        prompt = F.normalize(model.encode_class_prompts(names).float(), dim=-1)
        expect = []
        for ci, c in enumerate(names):
            texts = descs[c]["spatial"] + descs[c]["temporal"]
            views = F.normalize(encode_texts(enc, texts).float(), dim=-1)
            expect.append(F.normalize((prompt[ci] + views.sum(0)) / (1 + len(texts)), dim=-0))
        expect = torch.stack(expect)
        assert torch.allclose(weights, expect, atol=1e-5)
        assert not torch.allclose(F.normalize(plain, dim=-1), expect, atol=1e-3)

        video = torch.randn(2, 8, 3, model.image_size, model.image_size)
        v = F.normalize(model.encode_video(video).float(), dim=-1)
        logits = model(video, weights)
        assert torch.allclose(logits, model.logit_scale * v @ expect.t(), atol=1e-4)
        assert not torch.allclose(logits, model(video, plain), atol=1e-4)
    # The embeddings were stored for the next evaluation.
    with Store(cache, readonly=True) as store:
        assert store.texts_missing_embeddings(enc.fingerprint, [set_a]) == []


def test_classifier_spec_errors():
    with pytest.raises(MstaError, match="--descriptions"):
        ClassifierSpec("descriptions").check()
    with pytest.raises(MstaError, match="names or descriptions|names, descriptions"):
        ClassifierSpec("words").check()


def test_eval_zero_shot_with_descriptions(synth, two_sets, msta_cli):
    cache, _, set_b = two_sets
    common = [
        "eval",
        "--zero-shot",
        "-c",
        "synth",
        *synth_overrides(synth),
        "--split",
        str(synth / "val.txt"),
    ]
    common += ["--classes", str(synth / "classes.csv"), "--root", str(synth), "--json"]
    res = msta_cli([*common, "--classifier", "descriptions", "--descriptions", str(cache), "--set-id", set_b])
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["checkpoint"] == "zero-shot"
    assert report["classifier"] == {"kind": "descriptions", "descriptions": str(cache), "set": set_b}
    val = report["splits"]["val"]
    assert val["n"] == 12 and val["classifier"]["set"] == set_b
    plain = msta_cli(common)
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["splits"]["val"]["classifier"] == {"kind": "names"}


def test_eval_asks_for_a_set_when_several_cover_the_classes(synth, two_sets, msta_cli):
    cache, set_a, set_b = two_sets
    res = msta_cli([
        "eval", "--zero-shot", "-c", "synth", *synth_overrides(synth), "--split", str(synth / "val.txt"),
        "--classes", str(synth / "classes.csv"), "--root", str(synth),
        "--classifier", "descriptions", "--descriptions", str(cache),
    ])  # fmt: skip
    assert res.returncode == 2 and "--set-id ID" in res.stderr
    assert set_a[:16] in res.stderr and set_b[:16] in res.stderr


def test_eval_argument_errors(synth, msta_cli):
    res = msta_cli(["eval", "--zero-shot", "-c", "synth", "--classifier", "descriptions"])
    assert res.returncode == 2 and "--descriptions" in res.stderr
    res = msta_cli(["eval"])
    assert res.returncode == 2 and "--zero-shot" in res.stderr
