"""descgen encode: exactness of the context cut, fingerprints, storage, resume, the trainer API."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from descgen.encode import (
    EncoderLoadError,
    MissingDescriptionsError,
    RandomWeightsWarning,
    SetSelectionError,
    TextEncoder,
    encode_missing,
    encode_texts,
    load_description_embeddings,
    load_text_encoder,
    select_set,
)
from descgen.store import Store, text_hash
from tests.descgen_helpers import DESCGEN, make_generated_set, run_cli_process, sentences

REPO = Path(__file__).resolve().parents[2]

TEXTS = [
    "A video about a dog.",
    "A video of abseiling generally involves the following step: securing the rope, which is a sub-step.",
    "short",
    "",
    "word " * 120,  # longer than the context: truncated by the tokenizer
    "A video about the kicker lining up. the kicker takes a deep breath. the kicker focuses on the ball.",
    "Pushing something from left to right",
]


def test_cut_is_exact_against_open_clip_encode_text(tiny_encoder):
    tokens = tiny_encoder.tokenizer(TEXTS)
    with torch.inference_mode():
        ref = tiny_encoder.model.encode_text(tokens)
        for bs in (1, 2, 3, 256):
            out = encode_texts(tiny_encoder, TEXTS, batch_size=bs)
            assert out.shape == ref.shape
            assert out.dtype == torch.float32
            assert (out - ref).abs().max().item() < 1e-5


@pytest.mark.slow
def test_cut_is_exact_for_vit_b_16_text_tower():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        enc = load_text_encoder("ViT-B-16", "none")
    with torch.inference_mode():
        ref = enc.model.encode_text(enc.tokenizer(TEXTS))
    out = encode_texts(enc, TEXTS, batch_size=4)
    assert (out - ref).abs().max().item() < 1e-5


def test_cut_really_shortens_the_context(tiny_encoder, monkeypatch):
    seen: list[int] = []
    transformer = tiny_encoder.model.transformer
    original = type(transformer).forward

    def spy(self, x, *args, **kwargs):
        seen.append(x.shape[1])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(type(transformer), "forward", spy)
    encode_texts(tiny_encoder, ["a dog", "a cat"], batch_size=8)
    assert seen and max(seen) < tiny_encoder.context_length
    seen.clear()
    encode_texts(tiny_encoder, ["a dog", "a cat"], batch_size=8, cut=False)
    assert seen == [tiny_encoder.context_length]


def test_fingerprint_identifies_the_weights(tiny_clip_config, tiny_encoder):
    with pytest.warns(RandomWeightsWarning):
        again = load_text_encoder(str(tiny_clip_config), "none")
    assert again.fingerprint == tiny_encoder.fingerprint
    assert again.fingerprint.startswith("clip-tiny@")
    assert again.random_weights
    # The trainer wraps its own backbone: same weights, same fingerprint.
    wrapped = TextEncoder.from_model(again.model, again.tokenizer, str(tiny_clip_config), "none")
    assert wrapped.fingerprint == tiny_encoder.fingerprint
    # Other weights, other fingerprint; the image tower does not count.
    with torch.no_grad():
        next(p for n, p in again.model.named_parameters() if n.startswith("visual.")).add_(1.0)
    assert (
        TextEncoder.from_model(again.model, again.tokenizer, "clip-tiny", "none").fingerprint
        == again.fingerprint
    )
    with torch.no_grad():
        again.model.ln_final.weight.add_(0.5)
    changed = TextEncoder.from_model(again.model, again.tokenizer, "clip-tiny", "none")
    assert changed.fingerprint != tiny_encoder.fingerprint


def test_local_checkpoint_file(tmp_path, tiny_clip_config, tiny_encoder):
    ckpt = tmp_path / "weights.pt"
    torch.save(tiny_encoder.model.state_dict(), ckpt)
    enc = load_text_encoder(str(tiny_clip_config), str(ckpt))
    assert enc.fingerprint == tiny_encoder.fingerprint
    assert not enc.random_weights
    assert enc.pretrained == str(ckpt.resolve())


def test_pretrained_tag_offline_fails_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    with pytest.raises(EncoderLoadError, match="not in the local cache"):
        load_text_encoder("ViT-B-16", "openai")
    assert time.monotonic() - t0 < 20
    with pytest.raises(EncoderLoadError, match="neither a file nor a known tag"):
        load_text_encoder("ViT-B-16", "no-such-tag")
    with pytest.raises(EncoderLoadError, match="unknown backbone 'No-Such-Model'"):
        load_text_encoder("No-Such-Model", "none")
    with pytest.raises(EncoderLoadError, match="not a local file"):
        load_text_encoder("viclip-tiny", "some-tag")


def _set_with_texts(store: Store, n_classes: int = 3, long_text: bool = False):
    classes = {}
    for i in range(n_classes):
        name = f"class {i}"
        sp, tp = sentences(name, [f"object {i} a", f"object {i} b"], [f"step {i} one", f"step {i} two"])
        if long_text and i == 0:
            sp[1] = "A video about " + "very " * 100 + "long things."
        classes[name] = (sp, tp)
    return make_generated_set(store, "toy", classes), classes


def test_encode_missing_stores_float32_and_is_idempotent(store, tiny_encoder):
    set_, classes = _set_with_texts(store, long_text=True)
    n = encode_missing(store, tiny_encoder, progress=False)
    texts = [t for sp, tp in classes.values() for t in sp + tp]
    assert n == len(set(texts))
    assert encode_missing(store, tiny_encoder, progress=False) == 0
    enc_row = store.get_encoder(tiny_encoder.fingerprint)
    assert enc_row["dim"] == tiny_encoder.dim and enc_row["random_weights"] == 1
    rows = store.get_embeddings(tiny_encoder.fingerprint, [text_hash(t) for t in texts])
    ref = encode_texts(tiny_encoder, texts, batch_size=4)
    for i, t in enumerate(texts):
        r = rows[text_hash(t)]
        assert r["dtype"] == "float32" and r["dim"] == tiny_encoder.dim
        vec = np.frombuffer(r["vector"], dtype=np.float32)
        assert np.abs(vec - ref[i].numpy()).max() < 1e-5
        assert r["n_tokens"] == tiny_encoder.count_tokens(t)
        assert bool(r["truncated"]) == (r["n_tokens"] > tiny_encoder.context_length)
    long_row = rows[text_hash(classes["class 0"][0][1])]
    assert long_row["truncated"] == 1 and long_row["n_tokens"] > 77
    # A new set with some shared sentences only encodes the new ones.
    make_generated_set(
        store, "toy2", {"x": (classes["class 1"][0], ["A video of x generally involves new"] * 2)}
    )
    assert encode_missing(store, tiny_encoder, progress=False) == 1


def test_load_description_embeddings_and_missing_error(store, tiny_encoder):
    set_, classes = _set_with_texts(store, n_classes=4)
    names = ["class 2", "class 0", "class 3"]
    with pytest.raises(MissingDescriptionsError) as err:
        load_description_embeddings(store, set_.id, names, tiny_encoder.fingerprint)
    assert "no embeddings for encoder" in str(err.value)
    encode_missing(store, tiny_encoder, progress=False)
    sp, tp = load_description_embeddings(store, set_.id, names, tiny_encoder.fingerprint)
    assert sp.shape == (3, 2, tiny_encoder.dim) and tp.shape == (3, 2, tiny_encoder.dim)
    assert sp.dtype == torch.float32
    ref = encode_texts(tiny_encoder, classes["class 0"][1], batch_size=2)
    assert (tp[1] - ref).abs().max().item() < 1e-5
    with pytest.raises(MissingDescriptionsError) as err:
        load_description_embeddings(store, set_.id, ["class 1", "nope", "neither"], tiny_encoder.fingerprint)
    assert err.value.classes == ["nope", "neither"]
    assert "nope" in str(err.value) and "neither" in str(err.value) and "class 1" not in err.value.classes
    # A description without an embedding is named too.
    make_generated_set(store, "toy", {"class 9": sentences("class 9", ["new a", "new b"], ["s1", "s2"])})
    with pytest.raises(MissingDescriptionsError, match="without embeddings") as err:
        load_description_embeddings(store, set_.id, ["class 0", "class 9"], tiny_encoder.fingerprint)
    assert err.value.classes == ["class 9"]


def test_select_set(store):
    a, classes = _set_with_texts(store, n_classes=2)
    assert select_set(store, dataset="toy").id == a.id
    assert select_set(store, set_id=a.id[:6]).id == a.id
    b = make_generated_set(store, "toy", {"class 0": classes["class 0"]}, model="other-model")
    with pytest.raises(SetSelectionError) as err:
        select_set(store, dataset="toy")
    assert a.id in str(err.value) and b.id in str(err.value) and "--set" in str(err.value)
    # Only a is complete for both classes.
    assert select_set(store, dataset="toy", class_names=["class 0", "class 1"]).id == a.id
    assert select_set(store, dataset="toy", model="other-model").id == b.id
    with pytest.raises(SetSelectionError, match="no description set"):
        select_set(store, dataset="toy", set_id="zzzz")
    with pytest.raises(SetSelectionError, match="no description set"):
        select_set(store, dataset="other")


@pytest.mark.slow
def test_cli_encode_warns_on_random_weights_and_resumes_after_kill(tmp_path, tiny_clip_config, tiny_encoder):
    db = tmp_path / "c.db"
    with Store(db) as st:
        classes = {
            f"c{i}": sentences(
                f"c{i}", [f"thing {i} {j}" for j in range(4)], [f"step {i} {j}" for j in range(4)]
            )
            for i in range(150)
        }
        make_generated_set(st, "toy", classes, n=4)
    total = 150 * 8
    args = [
        "encode",
        "--cache",
        str(db),
        "--model",
        str(tiny_clip_config),
        "--pretrained",
        "none",
        "--batch-size",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [*DESCGEN, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        count = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    count = conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
            except sqlite3.OperationalError:
                count = 0
            if count >= 10:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "encode finished before it could be killed; make the job bigger"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with Store(db) as st:
        partial = st.count_rows("embeddings")
        assert 10 <= partial < total
        assert st.integrity_check() == "ok"
    res = run_cli_process(*args[:-3], "--batch-size", "64", "--no-progress")
    assert res.returncode == 0, res.stderr
    assert "RANDOM WEIGHTS" in res.stderr
    assert f"encoded {total - partial} descriptions" in res.stdout
    with Store(db) as st:
        assert st.count_rows("embeddings") == total
        assert st.integrity_check() == "ok"
        hashes = [text_hash(t) for sp, tp in classes.values() for t in sp + tp]
        rows = st.get_embeddings(tiny_encoder.fingerprint, hashes)
    assert len(rows) == total
    ref = encode_texts(tiny_encoder, [classes["c0"][0][0]], batch_size=1)[0].numpy()
    vec = np.frombuffer(rows[text_hash(classes["c0"][0][0])]["vector"], dtype=np.float32)
    assert np.abs(vec - ref).max() < 1e-5
    again = run_cli_process(*args)
    assert again.returncode == 0 and "encoded 0 descriptions" in again.stdout


def test_cli_encode_user_errors(tmp_path):
    res = run_cli_process("encode", "--cache", str(tmp_path / "none.db"), "--pretrained", "none")
    assert res.returncode == 2 and "cache file not found" in res.stderr and "Traceback" not in res.stderr
    db = tmp_path / "c.db"
    Store(db).close()
    t0 = time.monotonic()
    res = run_cli_process(
        "encode",
        "--cache",
        str(db),
        "--model",
        "ViT-B-16",
        "--pretrained",
        "openai",
        env={"HF_HUB_OFFLINE": "1"},
    )
    assert res.returncode == 2 and "cannot be downloaded" in res.stderr and "Traceback" not in res.stderr
    assert time.monotonic() - t0 < 60
    res = run_cli_process("encode", "--cache", str(db), "--dataset", "nothing", "--pretrained", "none")
    assert res.returncode == 2 and "no description sets" in res.stderr


def test_importing_the_cache_commands_stays_light():
    code = (
        "import sys, descgen.cli_audit, descgen.audit, descgen.report, descgen.transfer, descgen.encode; "
        "print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_from_model_keeps_the_train_mode(tiny_encoder):
    model = tiny_encoder.model
    model.train()
    try:
        enc = TextEncoder.from_model(model, tiny_encoder.tokenizer, "clip-tiny", "none")
        assert model.training
        out = encode_texts(enc, ["a dog"], batch_size=1)
        assert model.training and out.shape == (1, enc.dim)
    finally:
        model.eval()


@pytest.mark.parametrize("name", ["viclip-tiny", "clip-tiny"])
def test_cli_encode_by_shipped_name_matches_the_msta_backbone(tmp_path, name):
    from msta.backbone import create_backbone

    db = tmp_path / "c.db"
    classes = {"c0": (["a man running", "a red ball"], ["jumps then lands", "spins around"])}
    with Store(db) as st:
        set_ = make_generated_set(st, "mini", classes)
    res = run_cli_process(
        "encode", "--cache", str(db), "--model", name, "--pretrained", "none", "--no-progress"
    )
    assert res.returncode == 0, res.stderr
    backbone = create_backbone(name, "none")
    mine = TextEncoder.from_model(backbone.frozen_text_model(), backbone.tokenizer, name, "none")
    assert mine.fingerprint.startswith(f"{name}@")
    with Store(db) as st:
        spatial, temporal = load_description_embeddings(st, set_.id, ["c0"], mine.fingerprint)
    ref = encode_texts(mine, list(classes["c0"][0]))
    assert torch.allclose(spatial[0], ref, rtol=1e-5, atol=1e-6)
    assert spatial.shape == temporal.shape == (1, 2, backbone.embed_dim)
