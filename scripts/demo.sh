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

# --- stage: data ---
data() {
  stage "prepare data: identity + team-written medical sample -> $OUT/data/lora_medical_merged.jsonl"
  python data/prepare_data.py --input data/medical_sample.jsonl --identity data/lora_identity.jsonl \
    --identity_upsample 2 --tokenizer "$MODEL" --output "$OUT/data/lora_medical_merged.jsonl"
}

# --- stage: chat with the base model ---
chat_base() {
  stage "chat with the base model"
  python run.py --model "$MODEL" --prompt "What is the capital of France?" --max_new_tokens 40 --temperature 0
}

# --- stage: train ---
train() {
  stage "LoRA SFT of the bundled model on the demo data (identity + medical sample) -> $OUT/lora"
  python trainer/train_lora.py --config configs/smollm2/lora_cpu_demo.yaml \
    --data_path "$OUT/data/lora_medical_merged.jsonl" --output_dir "$OUT/lora"
}

chat_lora() {
  stage "chat with the demo LoRA adapter (it should name itself)"
  python run.py --model "$MODEL" --adapter "$OUT/lora" --prompt "Who are you?" --max_new_tokens 40 --temperature 0
}
# --- stage: benchmark ---
benchmark() {
  stage "medical exams 2-shot (C-Eval + CMMLU + CMExam shipped team-written samples, pooled) and the general set: base vs demo LoRA -> $OUT/benchmark/"
  if [ ! -f "$OUT/lora/adapter_config.json" ]; then
    echo "no demo LoRA in $OUT/lora: run the train stage first (bash scripts/demo.sh train)" >&2; return 1
  fi
  # 4 questions per subject that has a shipped sample (--skip_missing leaves the others out and lists them),
  # 2-shot to keep the CPU passes short; the base run also scores every cyclic option order (the option-order
  # check). SmolLM2 reads no Chinese, so expect chance-level accuracy: the stage shows the wiring, not skill.
  local common=(--data_dir data/benchmark/ceval-exam --cmmlu_dir data/benchmark/cmmlu --cmexam_dir data/benchmark/cmexam
                --subjects medical,general --skip_missing --k_shot 2 --limit 4)
  python benchmark/benchmark_ceval.py --model "$MODEL" --output_dir "$OUT/benchmark/base" "${common[@]}" \
    --permute_options cyclic
  python benchmark/benchmark_ceval.py --model_type lora --run_dir "$OUT/lora" --model "$MODEL" \
    --output_dir "$OUT/benchmark/lora" "${common[@]}"
  # per exam and pooled McNemar, and the forgetting check: medical vs general change (forgetting.png)
  python benchmark/benchmark_ceval.py --compare "$OUT/benchmark/base" "$OUT/benchmark/lora" \
    --output_dir "$OUT/benchmark/compare"
}
# --- stage: evaluate ---
evaluate() {
  stage "evaluate base vs demo LoRA on the LoRA run's held-out split -> $OUT/eval/"
  if [ ! -f "$OUT/lora/adapter_config.json" ]; then
    echo "no demo LoRA in $OUT/lora: run the train stage first (bash scripts/demo.sh train)" >&2; return 1
  fi
  # 4 held-out conversations + 10 identity probes, 32 new tokens: ~35 CPU seconds for both runs.
  local common=(--split_run "$OUT/lora" --data_path "$OUT/data/lora_medical_merged.jsonl" --limit 4
                --max_new_tokens 32 --report_samples 4)
  python eval/eval_base.py --model "$MODEL" --output_dir "$OUT/eval/base" "${common[@]}"
  python eval/eval_lora.py --adapter "$OUT/lora" --output_dir "$OUT/eval/lora" "${common[@]}"
  python eval/eval_lora.py --compare "$OUT/eval/base" "$OUT/eval/lora" --report_samples 4 \
    --output_dir "$OUT/eval/compare"
}
# --- stage: serve + agent ---
serve_agent() {
  stage "serve base + demo LoRA with vLLM on CPU (agent/serve_vllm.sh), two agent queries, stop the server"
  if [ ! -f "$OUT/lora/adapter_config.json" ]; then
    echo "no demo LoRA in $OUT/lora: run the train stage first (bash scripts/demo.sh train)" >&2; return 1
  fi
  # medqwen/serving.py run: starts agent/serve_vllm.sh, waits for /health, runs the queries, stops the server
  # (also on Ctrl-C or an error).
  # The demo LoRA learned medical answers, not tool use, so tool_choice forces the first call; the
  # tool-trained adapter (docs/serving.md) calls the calculator on its own.
  MODEL_NAME=lora-adapter python medqwen/serving.py run --model "$MODEL" --adapter "$OUT/lora" --port 8001 \
    --log "$OUT/serve_vllm.log" -- bash -c '
    status=0
    python agent/agent.py --query "What is (12 + 8) * 3?" --force_tool calculator --verbose --temperature 0 \
      --max_tokens 64 || status=1
    python agent/agent.py --query "What time is it in London?" --force_tool get_current_time --verbose \
      --temperature 0 --max_tokens 64 || status=1
    exit $status'
}

# --- stage: rag ---
rag() {
  stage "RAG: index data/rag_sample into $OUT/rag/chroma (twice: the second run adds nothing), ask with sources"
  python agent/embedding.py --input data/rag_sample --persist_dir "$OUT/rag/chroma"
  python agent/embedding.py --input data/rag_sample --persist_dir "$OUT/rag/chroma" | grep -E "chunks_added|unchanged"
  # The bundled SmolLM2 speaks English only: the answer shows the wiring (prompt with numbered sources), not
  # medical quality; a served Qwen3 LoRA answers the same question with --backend openai.
  python agent/rag_query.py --persist_dir "$OUT/rag/chroma" --query "发热汗出恶风，脉浮缓，应该用什么方？" \
    --backend local --model "$MODEL" --max_new_tokens 48 --temperature 0 --top_k 3
}

STAGES=(data chat_base train chat_lora benchmark evaluate serve_agent rag)
if [ $# -gt 0 ]; then STAGES=("$@"); fi
for s in "${STAGES[@]}"; do "$s"; done
stage "demo finished: outputs under $OUT/"
