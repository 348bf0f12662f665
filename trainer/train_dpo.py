"""Preference training after SFT: DPO (TRL DPOTrainer) or ORPO with LoRA on chosen/rejected pairs.

    # from the SFT adapter, on the shipped sample -> out/qwen3-4b-dpo-medical
    python trainer/train_dpo.py --adapter out/qwen3-4b-lora-medical
    tensorboard --logdir=out/qwen3-4b-dpo-medical/logs
    python eval/eval_lora.py --adapter out/qwen3-4b-dpo-medical      # judge / exams, beside the SFT run

    # ORPO (no reference pass), or another DPO loss, on your own pairs (data/prepare_preference.py)
    python trainer/train_dpo.py --loss orpo --beta 0.1 --data_path data/medical_preference.jsonl
    python trainer/train_dpo.py --loss ipo --beta 0.5

    # the bundled CPU model, a minute
    python trainer/train_dpo.py --config configs/smollm2/dpo_cpu_demo.yaml

    # continue an interrupted run from its last checkpoint
    python trainer/train_dpo.py --adapter out/qwen3-4b-lora-medical --resume_from_checkpoint true

The run folder gets the adapter (+ tokenizer and chat template), config.yaml (written before training; its model
is the base model that eval and serving load), split/{train,eval}.jsonl, checkpoint-N/, logs/ (TensorBoard) and
metrics.json with the held-out reward accuracy and margins before and after training.
"""

from medqwen.cli import run_script
from medqwen.train.dpo import train_dpo
from medqwen.train.dpo_config import DpoConfig


def main(cfg: DpoConfig) -> dict:
    return train_dpo(cfg)


if __name__ == "__main__":
    run_script(DpoConfig, main)
