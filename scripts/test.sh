#!/usr/bin/env bash
# Run the tests. Sets up the environments first when needed (see scripts/setup.sh).
#
#   bash scripts/test.sh          fast: the unit tests (a few minutes on two cores)
#   bash scripts/test.sh --all    everything CI runs: also the slow integration tests
#                                 (training runs, real vLLM on the CPU, the whole quickstart)
#
# Other arguments go to pytest, e.g. `bash scripts/test.sh tests/descgen -k audit`.
set -euo pipefail
cd "$(dirname "$0")/.."
MARKERS=(-m "not slow and not vllm and not quickstart")
ARGS=()
for arg in "$@"; do
    if [[ "$arg" == "--all" ]]; then MARKERS=(); else ARGS+=("$arg"); fi
done
# The fast run needs no vLLM environment.
if [[ ${#MARKERS[@]} -gt 0 && -z "${SETUP_VLLM:-}" ]]; then export SETUP_VLLM=0; fi
# shellcheck disable=SC2086
bash scripts/setup.sh ${SETUP_ARGS:-} >&2
export HF_HUB_OFFLINE=1
exec .venv/bin/python -m pytest "${MARKERS[@]}" "${ARGS[@]}"
