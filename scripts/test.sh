#!/usr/bin/env bash
# Run the whole test suite (unit tests, then the slower marked integration tests and the quickstart).
# Sets up the environments first when needed (see scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC2086
bash scripts/setup.sh ${SETUP_ARGS:-} >&2
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "$@"
