"""Evaluate the GRPO adapter on held-out medical conversations (its base model comes from the run's config.yaml).

    python eval/eval_grpo.py                                    # out/qwen3-4b-grpo-medical -> out/eval/grpo/
    python eval/eval_grpo.py --limit 20 --max_new_tokens 128    # smoke run
    python eval/eval_grpo.py --compare out/eval/base out/eval/lora out/eval/grpo

The held-out questions default to the SFT run's validation split, so all three evaluations answer the same ones.
One entry point for the three (medqwen.evaluate.run.cli); this one defaults to --model_type grpo.
"""

from medqwen.evaluate.run import cli

if __name__ == "__main__":
    cli("grpo")
