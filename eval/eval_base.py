"""Evaluate the base model on held-out medical conversations (loss, ROUGE-L, BLEU, identity probes, judge).

    python eval/eval_base.py                                    # model/qwen -> out/eval/base/
    python eval/eval_base.py --limit 20 --max_new_tokens 128    # smoke run
    python eval/eval_base.py --judge_base_url http://localhost:8002/v1 --judge_model qwen-judge
    python eval/eval_base.py --compare out/eval/base out/eval/lora out/eval/grpo   # side by side

One entry point for the three (medqwen.evaluate.run.cli); this one defaults to --model_type base.
"""

from medqwen.evaluate.run import cli

if __name__ == "__main__":
    cli("base")
