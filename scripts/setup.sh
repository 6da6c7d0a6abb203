#!/usr/bin/env bash
# Set up everything the project needs on a fresh machine. Idempotent: a second run is a quick no-op.
#
#   .venv        the project (torch, open_clip, the descgen and msta commands, test tools)
#   .venv-vllm   the vLLM CPU engine, in its own environment because it pins its own torch
#                (skip with SETUP_VLLM=0)
#   chromium     headless browser used by the HTML report test (only with --with-browser, needs root)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
WITH_BROWSER=0
for arg in "$@"; do
    case "$arg" in
        --with-browser) WITH_BROWSER=1 ;;
        *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

main_stamp=$(stamp_of pyproject.toml scripts/setup.sh)
if [[ ! -f "$VENV/.stamp-$main_stamp" ]]; then
    echo "==> setting up $VENV (torch, open_clip, project)"
    [[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -m pip install -q -e '.[dev]' 2>&1 | grep -v '^WARNING: Location' || true
    "$VENV/bin/python" -c "import torch, open_clip, openai, av, descgen, msta" \
        || { echo "setup.sh: the project environment is broken" >&2; exit 1; }
    rm -f "$VENV"/.stamp-*
    touch "$VENV/.stamp-$main_stamp"
else
    echo "==> $VENV is up to date"
fi

if [[ "${SETUP_VLLM:-1}" != "0" ]]; then
    bash scripts/setup_vllm_cpu.sh
fi

if [[ "$WITH_BROWSER" == "1" ]] && ! command -v chromium >/dev/null 2>&1; then
    echo "==> installing headless chromium (Debian package)"
    if [[ $(id -u) -eq 0 ]]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "setup.sh: chromium not installed and not root; the HTML rendering test will be skipped" >&2
    fi
fi
echo "==> setup done"
