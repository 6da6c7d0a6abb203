#!/usr/bin/env bash
# The whole pipeline on a small example, on the CPU, with no API key:
#
#   1. set up the environments (.venv, and .venv-vllm for vLLM's CPU engine)
#   2. msta data synth        a small dataset of real mp4 videos whose classes differ only in motion
#   3. descgen generate       spatial and temporal class descriptions written by a real local LLM
#                             (Gemma-3-270M served by vLLM on the CPU) into a SQLite cache
#   4. descgen encode/audit   the text embeddings, the audit table (and an HTML page)
#   5. msta train / eval      MSTA with a tiny backbone on the CPU; accuracy and plots
#   6. a summary              where everything is, what to try next
#
# This script only creates the environments; steps 2-6 are scripts/quickstart.py, run with the
# project's interpreter. A second run reuses what the first one built: the environments, the
# converted model, the dataset, the cached descriptions (no LLM request is sent, so the server is
# not even started) and the finished training run.
#
# Environment:
#   QUICKSTART_HOME    work directory: dataset, runs, report, logs      (default: <repo>/.quickstart)
#   QUICKSTART_CACHE   the description cache                            (default: <repo>/cache/quickstart.db)
#   QUICKSTART_MODEL   a Hugging Face checkpoint directory to serve instead of Gemma-3-270M
#   QUICKSTART_PROMPT  a prompt name or .toml file for descgen generate  (default: descgen's default)
#   MODELS_DIR         where the converted Gemma checkpoint is kept
#                      (default: ~/.cache/msta-toolkit/models, shared by all checkouts)
#   QUICKSTART_SKIP_SETUP=1   do not run scripts/setup.sh (the environments must exist)
# Paths are taken relative to the directory the script is called from.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export QUICKSTART_STARTED="$(date +%s)"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ -t 1 ]]; then BOLD=$'\e[1m' RED=$'\e[31m' RESET=$'\e[0m'; else BOLD='' RED='' RESET=''; fi

printf '%s== [1/6] Environments: .venv (project) and .venv-vllm (vLLM CPU engine) ==%s\n' "$BOLD" "$RESET"
if [[ "${QUICKSTART_SKIP_SETUP:-0}" == "1" ]]; then
    echo "skipped (QUICKSTART_SKIP_SETUP=1)"
else
    printf '$ bash scripts/setup.sh\n'
    if ! bash "$REPO/scripts/setup.sh"; then
        printf '\n%squickstart failed: setting up the environments failed (see above)%s\n' "$RED$BOLD" "$RESET" >&2
        exit 1
    fi
fi
if [[ ! -x "$REPO/.venv/bin/python" ]]; then
    printf '\n%squickstart failed: %s is missing: run bash scripts/setup.sh%s\n' "$RED$BOLD" "$REPO/.venv/bin/python" "$RESET" >&2
    exit 1
fi
exec "$REPO/.venv/bin/python" "$REPO/scripts/quickstart.py"
