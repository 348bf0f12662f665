#!/usr/bin/env bash
# The whole pipeline on the bundled SmolLM2-135M, on CPU, offline, in minutes (`make demo` runs this).
# Each stage is a function; run one alone with `bash scripts/demo.sh <stage>`.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
MODEL=model/smollm2-135m-instruct
OUT=out/demo
mkdir -p "$OUT"

stage() { printf '\n\033[1m== %s ==\033[0m\n' "$*"; }

# --- stage: data (issue: foundation) ---
data() {
  stage "prepare data: identity + team-written medical sample -> $OUT/data/lora_medical_merged.jsonl"
  python data/prepare_data.py --input data/medical_sample.jsonl --identity data/lora_identity.jsonl \
    --identity_upsample 2 --tokenizer "$MODEL" --output "$OUT/data/lora_medical_merged.jsonl"
}

# --- stage: chat with the base model (foundation) ---
chat_base() {
  stage "chat with the base model"
  python run.py --model "$MODEL" --prompt "What is the capital of France?" --max_new_tokens 40 --temperature 0
}

# --- stage: train (trainer issue) ---
# --- stage: benchmark (C-Eval issue) ---
# --- stage: evaluate (evaluation issue) ---
# --- stage: serve + agent (serving issue) ---
# --- stage: rag (RAG issue) ---

STAGES=(data chat_base)
if [ $# -gt 0 ]; then STAGES=("$@"); fi
for s in "${STAGES[@]}"; do "$s"; done
stage "demo finished: outputs under $OUT/"
