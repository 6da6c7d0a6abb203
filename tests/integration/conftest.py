"""Fixtures for tests that run a real vLLM engine on the CPU.

They need the environment made by ``bash scripts/setup_vllm_cpu.sh`` (``.venv-vllm``, or the
path in ``VLLM_VENV``); without it those tests are skipped with that reason. Models are built
offline into ``.models/`` (or ``MSTA_MODELS_DIR``) and reused by later runs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_VENV = Path(os.environ.get("VLLM_VENV", REPO / ".venv-vllm")).resolve()
VLLM_PYTHON = VLLM_VENV / "bin" / "python"
MODELS_DIR = Path(os.environ.get("MSTA_MODELS_DIR", REPO / ".models")).resolve()


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The interpreter of the vLLM CPU environment."""
    if not VLLM_PYTHON.exists():
        pytest.skip(f"no vLLM CPU environment at {VLLM_VENV}: create it with bash scripts/setup_vllm_cpu.sh")
    return VLLM_PYTHON


@pytest.fixture(scope="session")
def tiny_llama(vllm_python: Path) -> Path:
    """A tiny random Llama chat model (built once by scripts/make_tiny_llama.py, then reused)."""
    out = MODELS_DIR / "tiny-llama"
    proc = subprocess.run(
        [str(vllm_python), str(REPO / "scripts" / "make_tiny_llama.py"), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    return out
