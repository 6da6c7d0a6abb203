"""Build a tiny, randomly initialised Llama chat model offline, for tests of the local LLM path.

Usage: python scripts/make_tiny_llama.py OUT_DIR

Writes a Hugging Face checkpoint (config.json, model.safetensors, tokenizer files with a chat
template) that vLLM loads like any other Llama. The weights are random but seeded, so the same
script always writes the same model. The tokenizer is a byte-level BPE trained here on a short
built-in text, so it can encode any string.

The random weights are nudged so that, under structured outputs, answers are short and
well-formed: two constant features in every token embedding (one always on, one on for tokens
that contain a double quote) ride the residual stream to the output head, which reads them as a
bias that depends on the previous token. Whole-word tokens are preferred inside strings, a
string is closed after a few words but never right after it was opened, and whitespace-only
tokens are avoided. The text is still random words; only its shape is steered, which keeps tests
fast and their answers valid.

Idempotent: a stamp keyed on this file's content makes a second run a no-op. Needs torch,
transformers and tokenizers (the vLLM CPU environment has them).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 1024
STAMP = ".build-stamp"

SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# Turns are "<|role|>\n{content}<|end|>\n"; the assistant's answer ends with <|end|> (the EOS).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

# Training text for the tokenizer: everyday words about actions, objects and scenes, and JSON.
CORPUS = """
A person stands in a kitchen and pours water from a bottle into a glass on the table.
Someone picks up a small box, turns it over, and puts it down next to the cup.
The hands push the object from left to right until it falls off the edge of the desk.
Two people play basketball outdoors; one dribbles, jumps, and throws the ball at the hoop.
A man rides a bicycle along a road, pedals faster, then stops at the corner.
A woman plays the guitar on a stage while the crowd claps and sings along.
The child climbs the stairs, opens the door, and walks into the bright room.
Close-up of fingers folding a sheet of paper in half, then pressing the crease flat.
The camera moves closer to a dog running across the grass and catching a frisbee.
Someone tears a piece of cloth, then throws the two pieces onto the floor.
A cook cuts vegetables with a knife on a wooden board and drops them into a pot.
The swimmer dives into the pool, swims to the wall, and turns around.
Describe what is visible: objects, body parts, the scene, clothing, colours, and shapes.
Describe the ordered steps of the action: first, next, then, finally, at the end.
Answer with JSON only. {"spatial": ["a red cup", "a hand"], "temporal": ["reach", "grasp", "lift"]}
{"spatial": [], "temporal": []} [1, 2, 3] {"name": "value", "items": ["one", "two", "three"]}
Moving something up, moving something down, pretending to open something without opening it.
Holding something in front of something, putting something on a surface, covering something.
Arms, legs, head, shoulders, feet, fingers, face, eyes, body, hair, shirt, ball, rope, bar.
Gym, field, court, street, park, beach, water, snow, room, house, car, horse, tree, sky.
"""

# Output-head weights on the two constant features (feature 0: always on; feature 1: the
# previous token contains a double quote). Logits are roughly these times 8 to 11.
W_CLOSE = (0.45, -1.5)  # the bare '"' token: close a string after words, not when just opened
W_WORD = (0.0, 0.0)  # alphabetic tokens of 3+ letters: the words of a phrase
W_OTHER = (-0.5, 0.0)  # punctuation, digits, letter fragments
W_SPACE = (-1.5, 0.0)  # whitespace-only tokens
FEATURE = 4.0


def _fingerprint() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def _build_tokenizer(out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in CORPUS.strip().splitlines() if line.strip()]
    # Repeat the text so that frequent pairs merge the same way on every run.
    tok.train_from_iterator(lines * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|end|>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)
    # Keep the template in tokenizer_config.json as well, for readers that only look there.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    return fast


def _build_model(out: Path, tokenizer) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb.normal_(0.0, 0.02)
        head = model.lm_head.weight
        head.normal_(0.0, 0.02)
        for token_id in range(vocab):
            text = tokenizer.decode([token_id])
            emb[token_id, 0] = FEATURE
            emb[token_id, 1] = FEATURE if '"' in text else 0.0
            if token_id in tokenizer.all_special_ids:
                weights = W_OTHER
            elif text == '"':
                weights = W_CLOSE
            elif text and not text.strip():
                weights = W_SPACE
            elif text.strip().isalpha() and len(text.strip()) >= 3:
                weights = W_WORD
            else:
                weights = W_OTHER
            head[token_id, 0], head[token_id, 1] = weights
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    # Generation defaults vLLM would otherwise pick up from the checkpoint: keep them neutral.
    gen = out / "generation_config.json"
    if gen.exists():
        gen.unlink()


def build(out_dir: str | Path) -> Path:
    out = Path(out_dir).resolve()
    stamp = out / STAMP
    key = _fingerprint()
    if stamp.is_file() and stamp.read_text().strip() == key:
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = _build_tokenizer(tmp)
    _build_model(tmp, tokenizer)
    (tmp / STAMP).write_text(key + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: make_tiny_llama.py OUT_DIR", file=sys.stderr)
        return 2
    out = build(argv[0])
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
