"""What the SFT, GRPO and preference trainers share: the base model and LoRA config, TrainingArguments, atomic
checkpoints and adapter saves, resume, run logging, peak memory."""

from __future__ import annotations

import os
import resource
import shutil
from pathlib import Path
from typing import Any

from medqwen.distributed import on_gpu
from medqwen.train.config import TrainConfig, TrainerFields

CHECKPOINT_PREFIX = "checkpoint"
STAGING_DIR = ".staging"  # checkpoints are written here, then renamed into place (atomic on one filesystem)


def load_base_model(cfg: TrainConfig, packing: bool = False):
    """The base model in bf16 on GPU (fp32 on CPU), with the configured attention kernel."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if on_gpu() and cfg.bf16 else torch.float32
    from medqwen.kernels.packed_attention import VARLEN, register_attention
    from medqwen.train.fast_path import attention_implementation

    attention = attention_implementation(cfg.attn_implementation, packing)
    if attention == VARLEN:  # packed-row FlashAttention of the fast path
        register_attention()
    kwargs = {"attn_implementation": attention} if attention else {}
    return AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype, **kwargs)


def lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_target_modules), task_type="CAUSAL_LM")


def trainer_arguments(cfg: TrainerFields) -> dict[str, Any]:
    """The TrainingArguments the LoRA and GRPO trainers both take from TrainerFields. bf16 and gradient
    checkpointing only on GPU (TRL defaults both on)."""
    gpu = on_gpu()
    return dict(
        output_dir=cfg.output_dir,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm,
        use_cpu=not gpu,  # also makes CPU processes under accelerate/torchrun one gloo process group
        bf16=cfg.bf16 and gpu,
        gradient_checkpointing=cfg.gradient_checkpointing and gpu,
        save_strategy="steps",
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        disable_tqdm=True,  # our callbacks print one line per logging step instead
        dataloader_pin_memory=gpu,
        seed=cfg.seed,
        data_seed=cfg.seed,
    )


def evaluation_arguments(eval_steps: int, has_eval: bool) -> dict[str, Any]:
    """Evaluate and checkpoint every `eval_steps` and keep the best checkpoint by held-out loss (when there is a
    held-out split); else neither."""
    if not has_eval:
        return {"eval_strategy": "no", "load_best_model_at_end": False}
    return dict(eval_strategy="steps", eval_steps=eval_steps, load_best_model_at_end=True,
                metric_for_best_model="eval_loss", greater_is_better=False)


def with_atomic_checkpoints(trainer_cls):
    """A subclass of a transformers/TRL trainer whose checkpoints appear atomically: written under `.staging/`,
    then renamed into place (SFTTrainer here, GRPOTrainer in medqwen.train.grpo).

    A process killed mid-save leaves at most a partial folder under `.staging/`; every `checkpoint-N` that
    exists (and so every resume point and every "best" checkpoint) is complete and loads.
    """
    import torch.distributed as dist
    from transformers.trainer_utils import rotate_checkpoints

    class AtomicTrainer(trainer_cls):
        _staging: str | None = None

        def _get_output_dir(self, trial):
            return self._staging or super()._get_output_dir(trial)

        def _save_checkpoint(self, model, trial):
            run_dir = super()._get_output_dir(trial)
            name = f"{CHECKPOINT_PREFIX}-{self.state.global_step}"
            staging = os.path.join(run_dir, STAGING_DIR)
            staged, final = os.path.join(staging, name), os.path.join(run_dir, name)
            if self.args.should_save and os.path.exists(staged):
                shutil.rmtree(staged)  # leftover of a killed save
            self._staging = staging
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self._staging = None
            if self.state.best_model_checkpoint == staged:  # on every rank: all of them load the best at the end
                self.state.best_model_checkpoint = final
                if self.args.should_save:
                    self.state.save_to_json(os.path.join(staged, "trainer_state.json"))
            distributed = dist.is_available() and dist.is_initialized()
            if distributed:
                dist.barrier()  # every rank has written its part (its RNG state) before the folder moves
            if self.args.should_save:
                if os.path.exists(final):
                    shutil.rmtree(final)  # re-running a step from an earlier checkpoint replaces it
                os.replace(staged, final)
                rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint)
            if distributed:
                dist.barrier()  # no rank resumes work before the checkpoint is in place

    AtomicTrainer.__name__ = AtomicTrainer.__qualname__ = f"Atomic{trainer_cls.__name__}"
    return AtomicTrainer


def use_run_logging(trainer, output_dir: str | Path) -> None:
    """Our one-line-per-step callback instead of raw log dicts, and TensorBoard in <output_dir>/logs."""
    from transformers import PrinterCallback
    from transformers.integrations import TensorBoardCallback

    trainer.remove_callback(PrinterCallback)
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):  # transformers 5 dropped `logging_dir`; the original used <out>/logs
            cb.logging_dir = str(Path(output_dir) / "logs")


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in output_dir (staged, partial saves are not candidates)."""
    folder = Path(output_dir)
    found = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
             and (p / "trainer_state.json").is_file()]
    return max(found, key=lambda p: int(p.name.split("-")[-1]), default=None)


def resolve_resume(cfg: TrainConfig) -> str | None:
    """`--resume_from_checkpoint`: true/last -> last checkpoint in output_dir; a path -> that; false/None -> none."""
    value = cfg.resume_from_checkpoint
    if value is None or value.lower() in ("false", "no", "0", ""):
        return None
    if value.lower() in ("true", "last", "yes", "1"):
        found = last_checkpoint(cfg.output_dir)
        if found is None:
            print(f"no checkpoint in {cfg.output_dir}: starting from scratch")
        return str(found) if found else None
    if not (Path(value) / "trainer_state.json").is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {value}: not a checkpoint folder (no trainer_state.json)")
    return value


def save_adapter_atomic(trainer, output_dir: str | Path) -> None:
    """Save adapter + tokenizer (+ chat_template.jinja) into output_dir, each file replaced atomically.

    Files are staged first and moved in with os.replace, adapter_config.json last: a folder that has it has
    complete weights next to it.
    """
    output_dir = Path(output_dir)
    staged = output_dir / STAGING_DIR / "final"
    if trainer.args.should_save and staged.exists():
        shutil.rmtree(staged)
    trainer.save_model(str(staged))  # unwraps DDP/FSDP; writes on the main process only
    if not trainer.args.should_save:
        return
    files = sorted(p for p in staged.iterdir() if p.is_file())
    files.sort(key=lambda p: p.name == "adapter_config.json")
    for path in files:
        os.replace(path, output_dir / path.name)
    shutil.rmtree(output_dir / STAGING_DIR)


def peak_memory_gb() -> float:
    """Peak accelerator memory (CUDA) or peak resident memory of this process (CPU), in GiB."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
