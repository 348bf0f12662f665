"""Preference training with LoRA: DPO (TRL's DPOTrainer and its losses) or ORPO, on chosen/rejected pairs.

A pair is rendered with our chat template and its reply is the template's `{% generation %}` span of the last
assistant turn, the tokens SFT trains on (reply and <|im_end|>, not the newline after it); TRL's own tokenization
would score everything after the prompt instead. The reference policy costs no second model:

    fresh LoRA on the base      the reference is the base: the same weights with the adapter disabled
    --adapter SFT_RUN           the policy starts as the SFT adapter; the reference is a frozen copy of that adapter
                                (TRL's "ref" adapter: the LoRA matrices only, a few MB), dropped before saving

ORPO (`--loss orpo`) needs no reference pass: NLL on the chosen reply plus beta x the odds-ratio term
(-log sigmoid(log odds(chosen) - log odds(rejected)), odds from the reply's mean token log-probability), the
formula of TRL's experimental ORPOTrainer with the NLL over the reply only, as our SFT's.

    cfg = DpoConfig(model="model/smollm2-135m-instruct", max_steps=3)
    summary = train_dpo(cfg)                                         # everything trainer/train_dpo.py does
    trainer = build_dpo_trainer(cfg, preference_dataset(pairs, tok))  # just the trainer (e.g. a random model)
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from medqwen.chat import encode_with_assistant_mask, load_tokenizer
from medqwen.configlib import save_config
from medqwen.data.conversations import split_conversations  # a seeded hold-out of any list, as SFT splits
from medqwen.distributed import on_gpu, process_state
from medqwen.jsonl import write_jsonl
from medqwen.reporting import markdown_table, write_metrics
from medqwen.runs import check_adapter, resolve_model, saved_base_model
from medqwen.train.callbacks import LogLineCallback
from medqwen.train.common import (
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
from medqwen.train.dpo_config import DpoConfig
from medqwen.train.preference_data import read_pairs

REFERENCE_ADAPTER = "ref"  # the name TRL's DPOTrainer gives its frozen copy of a pre-trained adapter


# ----------------------------------------------------------------------------------------------------------
# Data: pairs -> prompt / chosen / rejected token ids


def reply_span(mask: list[int]) -> tuple[int, int]:
    """(start, end) of the last run of 1s in an assistant mask: the final reply's tokens."""
    end = max((i + 1 for i, m in enumerate(mask) if m), default=0)
    if end == 0:
        raise ValueError("the chat template marked no assistant tokens: it needs {% generation %} markers")
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return start, end


def tokenize_pair(tokenizer, pair: dict) -> dict[str, list[int]]:
    """TRL's tokenized preference row: the prompt's ids and each reply's ids (its generation-marked span)."""
    sides = {}
    for side in ("chosen", "rejected"):
        ids, mask = encode_with_assistant_mask(tokenizer, pair["prompt"] + pair[side])
        start, end = reply_span(mask)
        sides[side] = (ids, start, end)
    (c_ids, c_start, c_end), (r_ids, r_start, r_end) = sides["chosen"], sides["rejected"]
    if c_ids[:c_start] != r_ids[:r_start]:  # the same prompt must render to the same tokens
        raise ValueError(f"prompt renders differently before the chosen and rejected replies: {pair['prompt']!r}")
    return {"prompt_ids": c_ids[:c_start], "chosen_ids": c_ids[c_start:c_end], "rejected_ids": r_ids[r_start:r_end]}


def preference_dataset(pairs: list[dict], tokenizer):
    """A `datasets.Dataset` of tokenized pairs (prompt_ids, chosen_ids, rejected_ids), the rows DPOTrainer trains."""
    from datasets import Dataset

    return Dataset.from_list([tokenize_pair(tokenizer, p) for p in pairs])


# ----------------------------------------------------------------------------------------------------------
# Trainer


def log1mexp(x):
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2 (as TRL's ORPO computes it)."""
    import torch

    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_log_odds(chosen_mean_logps, rejected_mean_logps):
    """log odds(chosen) - log odds(rejected), odds(y) = p / (1 - p) with p the reply's mean token probability."""
    chosen, rejected = chosen_mean_logps.float(), rejected_mean_logps.float()
    return (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))


def preference_trainer_class():
    """TRL's DPOTrainer, taking our tokenized rows as they are, with ORPO as one more loss."""
    import torch.nn.functional as F
    from trl import DPOTrainer

    class PreferenceTrainer(DPOTrainer):
        preference_loss = "sigmoid"

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            if "prompt_ids" not in dataset.column_names:
                return super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            if args.max_length is None:
                return dataset
            # As TRL does: a prompt that fills max_length leaves no reply token to score.
            return dataset.filter(lambda row: len(row["prompt_ids"]) < args.max_length)

        def _compute_loss(self, model, inputs, return_outputs):
            if self.preference_loss != "orpo":
                return super()._compute_loss(model, inputs, return_outputs)
            mode = "train" if self.model.training else "eval"
            mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(mask == 0, -100)
            outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels,
                            use_cache=False, fused_lm_head=True)
            shift_mask = mask[:, 1:]
            per_token = outputs.log_probs[:, -shift_mask.size(1):]  # 0 outside the replies
            mean_logps = per_token.sum(1) / shift_mask.sum(1).clamp(min=1)
            chosen, rejected = mean_logps.chunk(2)
            chosen_tokens, _ = per_token.chunk(2)
            nll = -chosen_tokens.sum() / shift_mask.chunk(2)[0].sum().clamp(min=1)
            log_odds = orpo_log_odds(chosen, rejected)
            loss = nll - self.beta * F.logsigmoid(log_odds).mean()
            gather = self.accelerator.gather_for_metrics
            metrics = self._metrics[mode]
            rewards_c, rewards_r = self.beta * chosen.detach(), self.beta * rejected.detach()
            metrics["rewards/chosen"].append(gather(rewards_c).mean().item())
            metrics["rewards/rejected"].append(gather(rewards_r).mean().item())
            metrics["rewards/accuracies"].append(gather((rewards_c > rewards_r).float()).mean().item())
            metrics["rewards/margins"].append(gather(rewards_c - rewards_r).mean().item())
            metrics["nll_loss"].append(gather(nll.detach()).mean().item())
            metrics["log_odds_ratio"].append(gather(log_odds.detach()).mean().item())
            if mode == "train":
                self._total_train_tokens += gather(inputs["attention_mask"].sum()).sum().item()
            metrics["num_tokens"] = [self._total_train_tokens]
            if return_outputs:
                return loss, outputs
            return loss

    return PreferenceTrainer


def dpo_args(cfg: DpoConfig, has_eval: bool):
    """TRL DPOConfig from our DpoConfig."""
    from trl import DPOConfig

    eval_kwargs: dict[str, Any] = {"eval_strategy": "no", "load_best_model_at_end": False}
    if has_eval:
        eval_kwargs = dict(eval_strategy="steps", eval_steps=cfg.eval_steps, load_best_model_at_end=True,
                           metric_for_best_model="eval_loss", greater_is_better=False)
    return DPOConfig(
        **trainer_arguments(cfg),
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        max_length=cfg.max_seq_len,
        loss_type=["sigmoid" if cfg.loss == "orpo" else cfg.loss],  # orpo: PreferenceTrainer's own loss
        beta=cfg.beta,
        label_smoothing=cfg.label_smoothing,
        save_steps=cfg.eval_steps,
        **eval_kwargs,
    )


def load_policy(cfg: DpoConfig):
    """(model, peft_config): the base with a fresh LoRA config, or with the SFT adapter loaded trainable."""
    model = load_base_model(cfg)  # reads model, bf16, attn_implementation: DpoConfig has them
    if not cfg.adapter:
        return model, lora_config(cfg)
    from peft import PeftModel

    adapter = check_adapter(cfg.adapter)
    base = saved_base_model(adapter)
    if base and Path(base).resolve() != Path(cfg.model).resolve():
        print(f"warning: {adapter} was trained on {base}, but --model is {cfg.model}")
    # DPOTrainer keeps a frozen copy of this adapter ("ref") as the reference policy.
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True), None


class PreferenceLineCallback(LogLineCallback):
    """SFT's one line per logging step, with the step's reward accuracy and margin appended."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        printer = self.print
        if logs and "rewards/accuracies" in logs:
            suffix = f" | reward acc {logs['rewards/accuracies']:.2f} | margin {logs.get('rewards/margins', 0):.4f}"
            self.print = lambda line, **kw: printer(line + suffix if line.startswith("step ") else line, **kw)
        try:
            super().on_log(args, state, control, logs=logs, **kwargs)
        finally:
            self.print = printer


def build_dpo_trainer(cfg: DpoConfig, train_dataset, eval_dataset=None, model=None, tokenizer=None,
                      callbacks: list | None = None):
    """The preference trainer (LoRA via PEFT) for a config and preference_dataset rows; `model`/`tokenizer` may be
    given (a model that already has a LoRA adapter keeps it and trains it)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model, cfg.chat_template)
    if model is None:
        model, peft_config = load_policy(cfg)
    else:
        peft_config = None if hasattr(model, "peft_config") else lora_config(cfg)
    has_eval = eval_dataset is not None and len(eval_dataset) > 0
    trainer = with_atomic_checkpoints(preference_trainer_class())(
        model=model, args=dpo_args(cfg, has_eval), train_dataset=train_dataset,
        eval_dataset=eval_dataset if has_eval else None, processing_class=tokenizer, peft_config=peft_config,
        callbacks=[PreferenceLineCallback(), *(callbacks or [])])
    trainer.preference_loss = cfg.loss
    use_run_logging(trainer, cfg.output_dir)
    trainer.fast_path_applied = apply_kernels(trainer, cfg)
    return trainer


def apply_kernels(trainer, cfg: DpoConfig) -> dict:
    """SFT's fused LoRA layers and compiled decoder layers, where asked (padding-free batches: see docs/training.md)."""
    from medqwen.kernels.fused_lora import compile_layers, fuse_lora
    from medqwen.train.fast_path import set_compiler_settings

    applied: dict[str, Any] = {}
    if cfg.fused_lora:  # its forward falls back to PEFT's when adapters are disabled: the reference pass stays exact
        applied["fused_lora_layers"] = fuse_lora(trainer.model)
    if cfg.compile_layers and on_gpu():
        set_compiler_settings(1.0, True)
        applied["compiled_layers"] = compile_layers(trainer.model)
    return applied


# ----------------------------------------------------------------------------------------------------------
# Held-out measurement


def pair_log_probs(trainer, dataset, batch_size: int) -> list[dict[str, float]]:
    """Per pair: summed reply log-probabilities under the policy and the reference (TRL's own reference pass:
    adapter disabled, or the "ref" adapter), and each reply's token count."""
    import torch

    model = trainer.model
    was_training = model.training
    model.eval()
    rows = []
    try:
        for start in range(0, len(dataset), batch_size):
            batch = trainer._prepare_inputs(trainer.data_collator([dataset[i] for i in
                                                                   range(start, min(start + batch_size,
                                                                                    len(dataset)))]))
            mask = batch["completion_mask"]
            labels = batch["input_ids"].masked_fill(mask == 0, -100)
            with torch.no_grad(), trainer.accelerator.autocast():
                out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels,
                            use_cache=False, fused_lm_head=True)
            policy = out.log_probs[:, -(mask.size(1) - 1):].sum(1).float()
            ref_c, ref_r = trainer.compute_ref_log_probs(model, batch)
            tokens = mask[:, 1:].sum(1)
            pc, pr = policy.chunk(2)
            nc, nr = tokens.chunk(2)
            for values in zip(pc.tolist(), pr.tolist(), ref_c.float().tolist(), ref_r.float().tolist(),
                              nc.tolist(), nr.tolist()):
                rows.append(dict(zip(("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected",
                                      "chosen_tokens", "rejected_tokens"), values)))
    finally:
        model.train(was_training)
    return rows


def preference_scores(rows: list[dict[str, float]], beta: float, loss: str = "sigmoid") -> dict[str, float]:
    """Reward accuracy and margin (DPO: beta x the policy/reference log-ratio; ORPO: beta x the mean token
    log-probability, as TRL logs them), the DPO loss, and the policy's own preference (mean token log-prob)."""
    if not rows:
        return {}
    if loss == "orpo":
        reward = lambda r, side: beta * r[f"policy_{side}"] / max(r[f"{side}_tokens"], 1)  # noqa: E731
    else:
        reward = lambda r, side: beta * (r[f"policy_{side}"] - r[f"ref_{side}"])  # noqa: E731
    margins = [reward(r, "chosen") - reward(r, "rejected") for r in rows]
    per_token = [r["policy_chosen"] / max(r["chosen_tokens"], 1) - r["policy_rejected"] / max(r["rejected_tokens"], 1)
                 for r in rows]
    dpo_margins = [beta * ((r["policy_chosen"] - r["ref_chosen"]) - (r["policy_rejected"] - r["ref_rejected"]))
                   for r in rows]
    n = len(rows)
    return {
        "pairs": n,
        "reward_accuracy": sum(m > 0 for m in margins) / n,
        "reward_margin": sum(margins) / n,
        "dpo_loss": sum(math.log1p(math.exp(-m)) if m > -30 else -m for m in dpo_margins) / n,  # -log sigmoid(m)
        "logp_accuracy": sum(d > 0 for d in per_token) / n,  # the policy's mean token log-prob prefers chosen
        "logp_margin_per_token": sum(per_token) / n,
        "chosen_logp": sum(r["policy_chosen"] for r in rows) / n,
        "rejected_logp": sum(r["policy_rejected"] for r in rows) / n,
    }


# ----------------------------------------------------------------------------------------------------------
# The whole run


def train_dpo(cfg: DpoConfig) -> dict[str, Any]:
    """Read and split pairs, measure the held-out split, train (or resume), measure again, save the adapter
    atomically, write metrics.json and print the before/after table."""
    cfg = replace(cfg, model=resolve_model(cfg.model, cfg.adapter).model)  # the base, checked
    out = Path(cfg.output_dir)
    procs = process_state()
    main_process = procs.is_main_process
    pairs = read_pairs(cfg.data_path, cfg.skip_invalid)
    train_pairs, eval_pairs = split_conversations(pairs, cfg.eval_ratio, cfg.seed)
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    train_ds = preference_dataset(train_pairs, tokenizer)
    eval_ds = preference_dataset(eval_pairs, tokenizer) if eval_pairs else None
    resume = resolve_resume(cfg)
    if main_process:
        save_config(cfg, out / "config.yaml", extra={"train_pairs": len(train_pairs), "eval_pairs": len(eval_pairs),
                                                     "gpu": on_gpu(), "processes": procs.num_processes})
        write_jsonl(train_pairs, out / "split" / "train.jsonl")
        write_jsonl(eval_pairs, out / "split" / "eval.jsonl")
        if resume is None and last_checkpoint(out) is not None:
            print(f"note: {out} holds checkpoints; pass --resume_from_checkpoint true to continue from them")
        print(f"data: {len(train_pairs)} train / {len(eval_pairs)} held-out pairs from {cfg.data_path}")

    trainer = build_dpo_trainer(cfg, train_ds, eval_ds, tokenizer=tokenizer)
    if main_process:
        trainer.model.print_trainable_parameters()
    held_out = trainer.eval_dataset
    before = preference_scores(pair_log_probs(trainer, held_out, cfg.per_device_eval_batch_size), cfg.beta,
                               cfg.loss) if held_out is not None else {}
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    wall_s = time.perf_counter() - t0
    after_rows = pair_log_probs(trainer, held_out, cfg.per_device_eval_batch_size) if held_out is not None else []
    after = preference_scores(after_rows, cfg.beta, cfg.loss)
    if REFERENCE_ADAPTER in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter(REFERENCE_ADAPTER)  # the frozen copy of --adapter: not part of the result
    save_adapter_atomic(trainer, out)

    state = trainer.state
    evals = [r["eval_loss"] for r in state.log_history if "eval_loss" in r]
    summary = {
        "loss": cfg.loss,
        "beta": cfg.beta,
        "global_step": state.global_step,
        "train_loss": result.training_loss,
        **{f"before_{k}": v for k, v in before.items() if k != "pairs"},
        **{f"after_{k}": v for k, v in after.items() if k != "pairs"},
        "final_eval_loss": evals[-1] if evals else None,
        "best_eval_loss": state.best_metric,
        "best_checkpoint": state.best_model_checkpoint,
        "train_tokens": int(max([r.get("num_tokens", 0) for r in state.log_history] or [0])),
        "wall_time_s": round(wall_s, 2),
        "peak_memory_gb": round(peak_memory_gb(), 3),
        "train_pairs": len(train_pairs),
        "eval_pairs": len(eval_pairs),
        "resumed_from": resume,
        "kernels": trainer.fast_path_applied,
    }
    if main_process:
        write_metrics(out, summary, detail={"held_out_after": after_rows, "log_history": state.log_history},
                      seed=cfg.seed, meta_extra={"base_model": cfg.model, "adapter": cfg.adapter})
        if before:
            keys = [k for k in before if k != "pairs"]
            print(f"held-out pairs: {before['pairs']} ({cfg.loss}, beta {cfg.beta})")
            print(markdown_table([[k, before[k], after[k]] for k in keys], ["metric", "before", "after"]))
        print(markdown_table([[k, v] for k, v in summary.items()
                              if v is not None and not k.startswith(("before_", "after_"))], ["metric", "value"]))
        print(f"adapter saved to {out} (base model: {cfg.model})")
    return summary

