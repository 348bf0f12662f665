"""LoRA SFT with TRL's SFTTrainer: data split, trainer construction, atomic checkpoints, resume, reporting.

`build_trainer(cfg, train_dataset, eval_dataset, model=..., tokenizer=...)` is the one place a trainer is made,
so the CLI (`trainer/train_lora.py`), the tests and speed benchmarks all run the same train step:

    cfg = TrainConfig(model="model/smollm2-135m-instruct", max_steps=10)
    summary = train(cfg)                                  # everything the CLI does
    trainer = build_trainer(cfg, to_dataset(records))     # just the trainer (e.g. around a random model)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import resource
import shutil
import time
from pathlib import Path
from typing import Any

from medqwen.chat import load_tokenizer
from medqwen.config import DataConfig, TrainConfig, TrainerFields
from medqwen.configlib import save_config
from medqwen.data import InputSpec, load_file
from medqwen.distributed import on_gpu, process_state
from medqwen.jsonl import write_jsonl
from medqwen.modeling import check_model_dir
from medqwen.reporting import markdown_table, pyplot, save_figure, write_metrics
from medqwen.runs import resolve_model

CHECKPOINT_PREFIX = "checkpoint"
STAGING_DIR = ".staging"  # checkpoints are written here, then renamed into place (atomic on one filesystem)


# ----------------------------------------------------------------------------------------------------------
# Data


def read_conversations(path: str | Path) -> list[dict]:
    """Conversations (`{"conversations": [...], "tools"?: [...]}`) from JSONL, validated by medqwen.data.

    `conversations` or `messages` (and the other formats data/prepare_data.py converts) are accepted; a bad
    line raises medqwen.data.DataError with "path:line: what is wrong".
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data '{path}' not found. Prepare it first (docs/data.md):\n"
                                f"  python data/prepare_data.py --output {path}")
    conversations = load_file(InputSpec(path), DataConfig()).conversations
    if not conversations:
        raise ValueError(f"{path}: no conversations found")
    return conversations


def to_trl_record(conversation: dict) -> dict[str, Any]:
    """A row in TRL's conversational format: `messages`, and `tools` as a JSON string (or None).

    Tool-call arguments become JSON strings too: Arrow stores dicts as one struct type per column and fills keys
    missing in a row with null, which the template would render as `"key": null`. The template renders a
    string argument verbatim, and json.dumps gives the same text as the template's `tojson`.
    """
    messages = []
    for message in conversation["conversations"]:
        message = dict(message)
        if message.get("tool_calls"):
            calls = json.loads(json.dumps(message["tool_calls"]))
            for call in calls:
                fn = call.get("function", call)
                if not isinstance(fn.get("arguments"), str):
                    fn["arguments"] = json.dumps(fn.get("arguments", {}), ensure_ascii=False)
            message["tool_calls"] = calls
        messages.append(message)
    tools = conversation.get("tools")
    return {"messages": messages, "tools": json.dumps(tools, ensure_ascii=False) if tools else None}


def split_conversations(conversations: list, eval_ratio: float, seed: int) -> tuple[list, list]:
    """Seeded shuffle, then hold out `eval_ratio` of the conversations (at least one when ratio > 0)."""
    order = list(range(len(conversations)))
    random.Random(seed).shuffle(order)
    n_eval = 0 if eval_ratio <= 0 else max(1, round(len(order) * eval_ratio))
    if n_eval >= len(order):
        raise ValueError(f"eval_ratio {eval_ratio} leaves no training data ({len(order)} conversations)")
    return [conversations[i] for i in order[n_eval:]], [conversations[i] for i in order[:n_eval]]



def to_dataset(conversations: list[dict]):
    """A `datasets.Dataset` in TRL's conversational format."""
    from datasets import Dataset

    return Dataset.from_list([to_trl_record(m) for m in conversations])


# ----------------------------------------------------------------------------------------------------------
# Model, LoRA and trainer




def load_base_model(cfg: TrainConfig, packing: bool = False):
    """The base model in bf16 on GPU (fp32 on CPU), with the configured attention kernel."""
    import torch
    from transformers import AutoModelForCausalLM

    check_model_dir(cfg.model)
    dtype = torch.bfloat16 if on_gpu() and cfg.bf16 else torch.float32
    from medqwen.train.fast_path import attention_implementation
    from medqwen.kernels.packed_attention import VARLEN, register_attention

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


def sft_config(cfg: TrainConfig, has_eval: bool):
    """TRL SFTConfig from our TrainConfig."""
    from trl import SFTConfig

    eval_kwargs: dict[str, Any] = {"eval_strategy": "no", "load_best_model_at_end": False}
    if has_eval:
        eval_kwargs = dict(eval_strategy="steps", eval_steps=cfg.eval_steps, load_best_model_at_end=True,
                           metric_for_best_model="eval_loss", greater_is_better=False)
    return SFTConfig(
        **trainer_arguments(cfg),
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        weight_decay=cfg.weight_decay,
        use_liger_kernel=cfg.use_liger_kernel,
        torch_compile=cfg.torch_compile,
        max_length=cfg.max_seq_len,
        assistant_only_loss=cfg.assistant_only_loss,
        # BFD packing is padding-free: rows are concatenations whose position ids restart at every conversation;
        # transformers turns restarting position ids into a block-diagonal mask (SDPA/eager) or varlen kernels.
        packing=cfg.packing,
        packing_strategy="bfd",
        save_steps=cfg.eval_steps,
        dataloader_num_workers=cfg.dataloader_num_workers,
        # Fast paths copy each (pinned) batch to the GPU without waiting for the copy: a waiting host cannot
        # queue the next step while the GPU finishes this one.
        accelerator_config={"non_blocking": cfg.fast_path != "off" and on_gpu()},
        **eval_kwargs,
    )


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


def build_trainer(cfg: TrainConfig, train_dataset, eval_dataset=None, model=None, tokenizer=None,
                  callbacks: list | None = None):
    """The SFTTrainer (LoRA via PEFT) for a config and TRL-format datasets; `model`/`tokenizer` may be given.

    The config's fields are applied as given: `train` (and perf_train) first resolve `fast_path` into them
    (medqwen.train.fast_path.resolve_fast_path)."""

    from medqwen.train.callbacks import LogLineCallback

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model, cfg.chat_template)
    model = model if model is not None else load_base_model(cfg, packing=cfg.packing or cfg.padding_free)
    has_eval = eval_dataset is not None and len(eval_dataset) > 0
    args = sft_config(cfg, has_eval)
    callbacks = [LogLineCallback(), *(callbacks or [])]
    if has_eval and cfg.early_stopping_patience > 0:
        from transformers import EarlyStoppingCallback

        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
    from trl import SFTTrainer

    from medqwen.train.fast_path import apply_fast_path

    trainer = with_atomic_checkpoints(with_deferred_metrics(with_forward_chunks(SFTTrainer)))(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset if has_eval else None,
        processing_class=tokenizer, peft_config=lora_config(cfg), callbacks=callbacks)
    if trainer.chat_template is not None:
        # TRL swaps in its own training template when ours lacks {% generation %} markers: never train on it.
        raise RuntimeError(f"{cfg.chat_template} has no {{% generation %}} markers; TRL would train on its own "
                           "template, not the one used at inference")
    use_run_logging(trainer, cfg.output_dir)
    trainer.deferred_metrics = cfg.deferred_metrics
    applied = apply_fast_path(trainer, cfg)  # padding-free batches, fused LoRA, varlen attention, compile...
    trainer.fast_path_applied = applied
    return trainer


def with_forward_chunks(trainer_cls):
    """A subclass of a transformers/TRL trainer that runs a micro-batch carrying FORWARD_CHUNKS (see
    medqwen.train.fast_path.PaddingFreeCollator) as one forward/backward per chunk.

    Each chunk's loss is normalised by the whole optimizer step's assistant-token count (`num_items_in_batch`,
    counted by the Trainer on the full micro-batch), so the summed gradients and the reported loss are those of
    the micro-batch in one pass. Under DDP only the last chunk's backward all-reduces.
    """
    from medqwen.train.fast_path import FORWARD_CHUNKS

    class ChunkedTrainer(trainer_cls):
        def training_step(self, model, inputs, num_items_in_batch=None):
            chunks = inputs.pop(FORWARD_CHUNKS, None)
            if not chunks:
                return super().training_step(model, inputs, num_items_in_batch)
            total = None
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                with contextlib.nullcontext() if last else self.accelerator.no_sync(model):
                    loss = super().training_step(model, chunk, num_items_in_batch)
                total = loss if total is None else total + loss
            return total

        def prediction_step(self, model, inputs, *args, **kwargs):
            inputs.pop(FORWARD_CHUNKS, None)  # no gradients kept: the whole micro-batch in one pass
            return super().prediction_step(model, inputs, *args, **kwargs)

    ChunkedTrainer.__name__ = ChunkedTrainer.__qualname__ = f"Chunked{trainer_cls.__name__}"
    return ChunkedTrainer


def with_deferred_metrics(trainer_cls):
    """A subclass of TRL's SFTTrainer that, when `deferred_metrics` is set, keeps its training metrics (entropy,
    token accuracy, tokens seen) on the device and reads them once per logging step.

    TRL gathers them across processes and reads them with `.item()` after every forward. Each read makes the host
    wait for the GPU; and under DDP, where a micro-batch split into forwards by token count gives processes
    different numbers of forwards, those per-forward gathers paired the wrong collectives and training hung.
    Here one reduction per logging step covers everything since the last (each process has trained as many
    micro-batches). The logged values are TRL's: per micro-batch (all processes and forwards of it together) the
    mean entropy and accuracy over its assistant tokens, averaged over the logging window; tokens seen, all
    processes. Evaluation, and losses other than TRL's plain one (a custom loss, label smoothing, DFT, MoE aux
    loss, sequence parallelism), keep TRL's own code.
    """

    import torch

    class DeferredMetricsTrainer(trainer_cls):
        deferred_metrics = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # per micro-batch since the last log: [entropy sum, top-1 hits, assistant tokens, tokens]
            self._metric_rows = []
            self._micro_batch_row = None  # the micro-batch being trained: the sums over its forwards so far

        def _plain_loss(self) -> bool:
            parallelism = getattr(self.accelerator, "parallelism_config", None)
            return (self.compute_loss_func is None and self.label_smoother is None
                    and getattr(self.args, "loss_type", "nll") == "nll" and not self.aux_loss_enabled
                    and not (parallelism is not None and getattr(parallelism, "sp_enabled", False)))

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            if self._micro_batch_row is not None:
                self._metric_rows.append(self._micro_batch_row)
                self._micro_batch_row = None
            return loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not (self.deferred_metrics and self.model.training and self._plain_loss()):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # TRL's loss, as its compute_loss computes it: log-probabilities from its fused LM head, summed over
            # the assistant tokens and divided by the step's assistant-token count
            inputs["use_cache"] = False
            outputs = model(**inputs, fused_lm_head=True)
            num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
            loss = (-outputs.log_probs).sum() / torch.as_tensor(num_tokens).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            if "attention_mask" in inputs:
                seen = inputs["attention_mask"].sum()
            else:  # padding-free: every position is a token
                seen = torch.full((), inputs["position_ids"].size(1), device=loss.device)
            row = torch.stack([outputs.entropy.detach().sum().float(), outputs.is_top1.sum().float(),
                               outputs.label_mask.sum().float(), seen.float()])
            self._micro_batch_row = row if self._micro_batch_row is None else self._micro_batch_row + row
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, start_time=None):
            if self._metric_rows and self.model.training:
                rows = torch.stack(self._metric_rows)
                self._metric_rows = []
                if self.accelerator.num_processes > 1:  # every process logs at the same step, after as many rows
                    rows = self.accelerator.reduce(rows, reduction="sum")
                metrics = self._metrics["train"]
                for entropy, hits, valid, seen in rows.tolist():  # the one read of the logging window
                    metrics["entropy"].append(entropy / valid if valid > 0 else 0.0)
                    metrics["mean_token_accuracy"].append(hits / valid if valid > 0 else 0.0)
                    self._total_train_tokens += int(seen) // self._tp_size
                metrics["num_tokens"] = [self._total_train_tokens]
            super().log(logs, start_time)

    DeferredMetricsTrainer.__name__ = DeferredMetricsTrainer.__qualname__ = f"DeferredMetrics{trainer_cls.__name__}"
    return DeferredMetricsTrainer


def use_run_logging(trainer, output_dir: str | Path) -> None:
    """Our one-line-per-step callback instead of raw log dicts, and TensorBoard in <output_dir>/logs."""
    from transformers import PrinterCallback
    from transformers.integrations import TensorBoardCallback

    trainer.remove_callback(PrinterCallback)
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):  # transformers 5 dropped `logging_dir`; the original used <out>/logs
            cb.logging_dir = str(Path(output_dir) / "logs")


# ----------------------------------------------------------------------------------------------------------
# Checkpoints and saving


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


def plot_loss_curve(log_history: list[dict], path: Path) -> Path | None:
    """Train and eval loss against optimizer step as a PNG."""
    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r]
    if not train and not evals:
        return None

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    for points, label, style in ((train, "train", "-"), (evals, "eval", "o-")):
        if points:
            ax.plot(*zip(*points), style, label=label)
    ax.set(xlabel="optimizer step", ylabel="loss (assistant tokens)", title="LoRA SFT loss")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=120)
    return path


# ----------------------------------------------------------------------------------------------------------
# The whole run


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Split, train (or resume), save the adapter atomically, write loss_curve.png and metrics.json."""
    check_model_dir(cfg.model)  # fail before anything is written
    out = Path(cfg.output_dir)
    procs = process_state()
    main_process = procs.is_main_process
    conversations = read_conversations(cfg.data_path)
    train_rows, eval_rows = split_conversations(conversations, cfg.eval_ratio, cfg.seed)
    resume = resolve_resume(cfg)
    from medqwen.train.fast_path import resolve_fast_path

    cfg, why = resolve_fast_path(cfg)  # before config.yaml: it records the settings the run really used
    if main_process:
        print(f"fast path: {cfg.fast_path} ({why})")
        save_config(cfg, out / "config.yaml", extra={"train_conversations": len(train_rows),
                                                     "eval_conversations": len(eval_rows),
                                                     "gpu": on_gpu(), "processes": procs.num_processes})
        write_jsonl(train_rows, out / "split" / "train.jsonl")
        write_jsonl(eval_rows, out / "split" / "eval.jsonl")
        if resume is None and last_checkpoint(out) is not None:
            print(f"note: {out} holds checkpoints; pass --resume_from_checkpoint true to continue from them")
        print(f"data: {len(train_rows)} train / {len(eval_rows)} eval conversations from {cfg.data_path}")

    trainer = build_trainer(cfg, to_dataset(train_rows), to_dataset(eval_rows) if eval_rows else None)
    if main_process:
        trainer.model.print_trainable_parameters()
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    wall_s = time.perf_counter() - t0
    save_adapter_atomic(trainer, out)

    state = trainer.state
    evals = [r["eval_loss"] for r in state.log_history if "eval_loss" in r]
    tokens = max([r.get("num_tokens", 0) for r in state.log_history] or [0])
    summary = {
        "global_step": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "train_loss": result.training_loss,
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": state.best_metric,
        "best_checkpoint": state.best_model_checkpoint,
        "train_tokens": int(tokens),
        "wall_time_s": round(wall_s, 2),
        "peak_memory_gb": round(peak_memory_gb(), 3),
        "train_conversations": len(train_rows),
        "eval_conversations": len(eval_rows),
        "resumed_from": resume,
        "fast_path": cfg.fast_path,
    }
    if main_process:
        plot_loss_curve(state.log_history, out / "loss_curve.png")
        write_metrics(out, summary, detail={"log_history": state.log_history}, seed=cfg.seed,
                      meta_extra={"base_model": cfg.model})
        rows = [[k, v] for k, v in summary.items() if not (isinstance(v, float) and math.isnan(v))]
        print(markdown_table(rows, ["metric", "value"]))
        print(f"adapter saved to {out} (base model: {cfg.model})")
    return summary


# ----------------------------------------------------------------------------------------------------------
# Merge (trainer/merge_lora.py)


def merge_adapter(cfg) -> Path:
    """Merge a LoRA adapter into its base (in fp32) and save model + tokenizer + chat template to a new folder."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    choice = resolve_model(cfg.model, cfg.adapter, "lora")
    adapter, base = Path(cfg.adapter), choice.model
    out = Path(cfg.output_dir or f"{str(adapter).rstrip('/')}-merged")
    if out.exists() and any(out.iterdir()) and not (out / "merge_config.yaml").is_file():
        raise FileExistsError(f"{out} exists and is not an earlier merge: choose another --output_dir")

    saved_dtype = AutoConfig.from_pretrained(base).dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # merge W + BA in full precision
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tokenizer = load_tokenizer(adapter if (adapter / "tokenizer_config.json").is_file() else base, cfg.chat_template)

    staged = out.parent / f".{out.name}.staging"
    if staged.exists():
        shutil.rmtree(staged)
    if isinstance(saved_dtype, str):
        saved_dtype = getattr(torch, saved_dtype)
    model.to(saved_dtype or torch.float32).save_pretrained(staged)
    tokenizer.save_pretrained(staged)  # tokenizer files + chat_template.jinja
    save_config(cfg, staged / "merge_config.yaml", extra={"base_model": base, "saved_dtype": str(saved_dtype)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(staged, out)
    return out
