"""LoRA SFT with TRL's SFTTrainer: data split, trainer construction, atomic checkpoints, resume, reporting.

`build_trainer(cfg, train_dataset, eval_dataset, model=..., tokenizer=...)` is the one place a trainer is made,
so the CLI (`trainer/train_lora.py`), the tests and speed benchmarks all run the same train step:

    cfg = TrainConfig(model="model/smollm2-135m-instruct", max_steps=10)
    summary = train(cfg)                                  # everything the CLI does
    trainer = build_trainer(cfg, to_dataset(records))     # just the trainer (e.g. around a random model)
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from medqwen.chat import load_tokenizer
from medqwen.configlib import save_config
from medqwen.data.conversations import read_conversations, split_conversations
from medqwen.distributed import on_gpu, process_state
from medqwen.jsonl import write_jsonl
from medqwen.reporting import markdown_table, pyplot, save_figure, write_metrics
from medqwen.runs import check_model
from medqwen.train.common import (
    evaluation_arguments,
    last_checkpoint,
    load_base_model,
    lora_config,
    peak_memory_gb,
    resolve_resume,
    save_adapter_atomic,
    trainer_arguments,
    use_run_logging,
    with_atomic_checkpoints,
)
from medqwen.train.config import TrainConfig

# ----------------------------------------------------------------------------------------------------------
# Data


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


def to_dataset(conversations: list[dict]):
    """A `datasets.Dataset` in TRL's conversational format."""
    from datasets import Dataset

    return Dataset.from_list([to_trl_record(m) for m in conversations])


# ----------------------------------------------------------------------------------------------------------
# Model, LoRA and trainer


def sft_config(cfg: TrainConfig, has_eval: bool):
    """TRL SFTConfig from our TrainConfig."""
    from trl import SFTConfig

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
        **evaluation_arguments(cfg.eval_steps, has_eval),
    )


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

    from medqwen.train.fast_path import apply_fast_path, fast_path_trainer

    trainer = with_atomic_checkpoints(fast_path_trainer(SFTTrainer))(
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
    check_model(cfg.model)  # fail before anything is written
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
