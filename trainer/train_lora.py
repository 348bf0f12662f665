"""LoRA SFT of a Qwen3 instruct model on conversation JSONL (TRL SFTTrainer + PEFT, assistant-only loss).

    # the original recipe: model/qwen, data/lora_medical_merged.jsonl -> out/qwen3-4b-lora-medical
    python trainer/train_lora.py
    tensorboard --logdir=out/qwen3-4b-lora-medical/logs

    # two 24 GB GPUs (DDP), with the preset
    accelerate launch --config_file configs/accelerate/ddp_2gpu.yaml trainer/train_lora.py \
        --config configs/qwen3-4b/lora_2x24gb.yaml

    # the bundled CPU model, a few minutes
    python trainer/train_lora.py --config configs/smollm2/lora_cpu_demo.yaml \
        --data_path out/demo/data/lora_medical_merged.jsonl --output_dir out/demo/lora

    # smoke run / continue an interrupted run from its last checkpoint
    python trainer/train_lora.py --max_steps 2 --report_to none
    python trainer/train_lora.py --resume_from_checkpoint true

The run folder gets the adapter (+ tokenizer and chat template), config.yaml (written before training),
split/{train,eval}.jsonl, checkpoint-N/, logs/ (TensorBoard), loss_curve.png and metrics.json.
"""

from medqwen.cli import run_script
from medqwen.train.config import TrainConfig
from medqwen.train.sft import train


def main(cfg: TrainConfig) -> dict:
    return train(cfg)


if __name__ == "__main__":
    run_script(TrainConfig, main)
