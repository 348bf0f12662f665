"""Merge a LoRA adapter into its base model and save a full model folder (for export, or vLLM without LoRA).

    python trainer/merge_lora.py                                   # out/qwen3-4b-lora-medical -> ...-merged
    python trainer/merge_lora.py --adapter out/demo/lora --output_dir out/demo/merged --dtype float32
    python run.py --model out/qwen3-4b-lora-medical-merged --prompt "你是谁？"

The base model is read from the run's config.yaml (or --model). Weights are merged in fp32 and saved in the
base model's dtype (--dtype to change it), with the tokenizer and our chat template; merge_config.yaml records
what was merged.
"""

from medqwen.cli import run_script
from medqwen.train.config import MergeConfig
from medqwen.train.merge import merge_adapter


def main(cfg: MergeConfig):
    out = merge_adapter(cfg)
    print(f"merged model saved to {out}")
    return out


if __name__ == "__main__":
    run_script(MergeConfig, main)
