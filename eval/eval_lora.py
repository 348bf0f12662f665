"""Evaluate the LoRA SFT adapter on held-out medical conversations (its base model comes from the run's config.yaml).

    python eval/eval_lora.py                                    # out/qwen3-4b-lora-medical -> out/eval/lora/
    python eval/eval_lora.py --limit 20 --max_new_tokens 128    # smoke run
    python eval/eval_lora.py --backend openai --served_model lora-adapter   # answers from `bash agent/serve_vllm.sh`
    python eval/eval_lora.py --compare out/eval/base out/eval/lora         # side by side

One entry point for the three (medqwen.evaluate.run.cli); this one defaults to --model_type lora.
"""

from medqwen.evaluate.run import cli

if __name__ == "__main__":
    cli("lora")
