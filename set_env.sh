#!/usr/bin/env bash
# Export the environment the original project used, with its defaults; values in .env win over the defaults.
#   source set_env.sh
_here="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
if [ -f "$_here/.env" ]; then
  set -a; . "$_here/.env"; set +a   # KEY=value lines; the API key stays in the environment only
fi
export VLLM_BASE_URL="${VLLM_BASE_URL:-http://localhost:8001/v1}"
export MODEL_NAME="${MODEL_NAME:-lora-adapter}"
export OPENWEATHER_API_KEY="${OPENWEATHER_API_KEY:-}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
[ -n "$OPENWEATHER_API_KEY" ] || echo "note: OPENWEATHER_API_KEY is not set; the weather tool will say so" >&2
unset _here
