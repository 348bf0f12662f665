"""GRPO on multiple-choice questions with verifiable rewards (TRL GRPOTrainer + LoRA).

A prompt is the benchmark's zero-shot chat prompt (`medqwen.exams.runner.render_prompt`) and a reply is read with the
benchmark's parser (`medqwen.exams.runner.extract_answer`), so the option GRPO rewards is the option benchmark_ceval.py
counts. Two rewards, summed with weights:

    correct_reward  1 when the parsed option is the answer, else 0
    format_reward   1 when the reply opens with the option letter (the benchmark's first rule and the form its
                    log-likelihood scoring measures), 0.5 when only the fallback rules find it, else 0

    cfg = GrpoConfig(model="model/smollm2-135m-instruct", max_steps=10)
    summary = train_grpo(cfg)                                        # everything trainer/train_grpo.py does
    trainer = build_grpo_trainer(cfg, mcq_dataset(questions, tok))   # just the trainer (e.g. a random model)
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from transformers import TrainerCallback

from medqwen.chat import load_tokenizer
from medqwen.configlib import save_config
from medqwen.distributed import is_main_process, on_gpu, process_state
from medqwen.exams.runner import (
    LEADING_ANSWER,  # the benchmark's "answer letter first" pattern
    Question,
    extract_answer,
    extract_cot_answer,
    render_prompt,
)
from medqwen.reporting import markdown_table, pyplot, save_figure, write_metrics
from medqwen.runs import check_adapter, resolve_model, saved_base_model
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
from medqwen.train.config import GrpoConfig
from medqwen.train.mcq import read_mcq_file


def completion_text(completion: Any) -> str:
    """The reply text of a completion (plain string, or a conversational [{'role', 'content'}] list)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def answer_format_score(text: str) -> float:
    """1.0: the reply opens with an option letter; 0.5: the letter is found only by the fallback rules; 0.0: none."""
    text = re.sub(r"<think>.*?</think>", "", text, flags=re.S)  # as extract_answer does for hybrid models
    if LEADING_ANSWER.match(text):
        return 1.0
    return 0.5 if extract_cot_answer(text) is not None else 0.0


def correct_reward(completions: list, answer: list[str], options: list[list[str]], question: list[str],
                   subject: list[str], question_id: list[str], **kwargs) -> list[float]:
    """1.0 when the benchmark's parser reads the correct option from the reply, else 0.0."""
    scores = []
    for completion, gold, opts, text, subj, qid in zip(completions, answer, options, question, subject, question_id):
        q = Question(subj, "train", qid, text, tuple(opts), gold)  # the options let the parser match option text
        scores.append(1.0 if extract_answer(completion_text(completion), q) == gold else 0.0)
    return scores


def format_reward(completions: list, **kwargs) -> list[float]:
    """The answer format score of each reply (see answer_format_score)."""
    return [answer_format_score(completion_text(c)) for c in completions]


REWARD_FUNCS = [correct_reward, format_reward]

# ----------------------------------------------------------------------------------------------------------
# Data


def mcq_dataset(questions: Sequence[Question], tokenizer, style: str = "official",
                enable_thinking: bool | None = None):
    """A `datasets.Dataset` of rendered prompts (the benchmark's zero-shot chat prompt) plus what rewards need."""
    from datasets import Dataset

    return Dataset.from_list([{
        "prompt": render_prompt(q, (), style, cot=False, tokenizer=tokenizer, chat=True,
                                enable_thinking=enable_thinking),
        "answer": q.answer, "options": list(q.options), "question": q.question, "subject": q.subject,
        "question_id": q.id,
    } for q in questions])


# ----------------------------------------------------------------------------------------------------------
# Model and trainer


def grpo_args(cfg: GrpoConfig):
    """TRL GRPOConfig from our GrpoConfig."""
    from trl import GRPOConfig

    vllm = {"vllm_mode": cfg.vllm_mode, "vllm_gpu_memory_utilization": cfg.vllm_gpu_memory_utilization}
    if cfg.vllm_server_base_url:
        vllm["vllm_server_base_url"] = cfg.vllm_server_base_url
    return GRPOConfig(
        **trainer_arguments(cfg),
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        beta=cfg.beta,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        reward_weights=[cfg.correct_reward_weight, cfg.format_reward_weight],  # order of REWARD_FUNCS
        use_vllm=cfg.use_vllm,
        **vllm,
        save_steps=cfg.save_steps,
        log_completions=cfg.log_completions,
    )


def grpo_lora_config(cfg: GrpoConfig, model):
    """The SFT trainer's LoRA config, optionally restricted to the model's last `lora_last_layers` layers."""
    config = lora_config(cfg)  # reads the lora_* fields: GrpoConfig has them
    if cfg.lora_last_layers:
        n_layers = model.config.num_hidden_layers
        config.layers_to_transform = list(range(max(n_layers - cfg.lora_last_layers, 0), n_layers))
    return config


def load_policy(cfg: GrpoConfig):
    """(model, peft_config): the base model with a fresh LoRA config, or with the SFT adapter loaded trainable."""
    model = load_base_model(cfg)  # reads model, bf16, attn_implementation: GrpoConfig has them
    if not cfg.init_adapter:
        return model, grpo_lora_config(cfg, model)
    from peft import PeftModel

    adapter = check_adapter(cfg.init_adapter)
    base = saved_base_model(adapter)
    if base and Path(base).resolve() != Path(cfg.model).resolve():
        print(f"warning: {adapter} was trained on {base}, but --model is {cfg.model}")
    # With beta > 0 TRL keeps a frozen copy ("ref") of this adapter as the reference policy.
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True), None


class RewardLineCallback(TrainerCallback):
    """Print `step 3/20 | reward 0.62 | correct 0.50 | format 0.60 | kl 0.001 | len 7.5 tok | 4.1 s/step | ETA`."""

    def __init__(self, print_fn=print):
        self.print = print_fn
        self._t0, self._step0 = 0.0, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0, self._step0 = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "reward" not in logs:
            return
        step = state.global_step
        s_per_step = (time.perf_counter() - self._t0) / max(step - self._step0, 1)
        eta = int(s_per_step * max(state.max_steps - step, 0))
        kl = f" | kl {logs['kl']:.4f}" if "kl" in logs else ""
        self.print(f"step {step}/{state.max_steps} | reward {logs['reward']:.3f} | "
                   f"correct {logs.get('rewards/correct_reward/mean', float('nan')):.3f} | "
                   f"format {logs.get('rewards/format_reward/mean', float('nan')):.3f}{kl} | "
                   f"len {logs.get('completions/mean_length', float('nan')):.1f} tok | {s_per_step:.2f} s/step | "
                   f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}", flush=True)


def build_grpo_trainer(cfg: GrpoConfig, train_dataset, model=None, tokenizer=None, callbacks: list | None = None):
    """The GRPOTrainer (LoRA via PEFT) for a config and an mcq_dataset; `model`/`tokenizer` may be given."""
    from trl import GRPOTrainer

    from medqwen.train.rollouts import CompiledRolloutTrainer, GraphRolloutTrainer, choose_rollouts

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model, cfg.chat_template)
    if model is None:
        model, peft_config = load_policy(cfg)
    else:
        peft_config = None if hasattr(model, "peft_config") else grpo_lora_config(cfg, model)
    rollouts, why = choose_rollouts(cfg.rollouts, cfg.use_vllm, on_gpu())
    if is_main_process():
        print(f"rollouts: {rollouts} ({why})")
    trainer_class = {"compiled": CompiledRolloutTrainer, "graph": GraphRolloutTrainer}.get(rollouts, GRPOTrainer)
    trainer = with_atomic_checkpoints(trainer_class)(
        model=model, reward_funcs=REWARD_FUNCS, args=grpo_args(cfg), train_dataset=train_dataset,
        processing_class=tokenizer, peft_config=peft_config, callbacks=[RewardLineCallback(), *(callbacks or [])])
    use_run_logging(trainer, cfg.output_dir)  # RewardLineCallback prints the one line per step
    return trainer


# ----------------------------------------------------------------------------------------------------------
# Reporting


def reward_history(log_history: list[dict]) -> list[dict[str, float]]:
    """Per logged step: step, reward, correct, format (and kl when logged)."""
    rows = []
    for r in log_history:
        if "reward" in r:
            row = {"step": r["step"], "reward": r["reward"], "correct": r.get("rewards/correct_reward/mean"),
                   "format": r.get("rewards/format_reward/mean"), "mean_length": r.get("completions/mean_length")}
            if "kl" in r:
                row["kl"] = r["kl"]
            rows.append(row)
    return rows


def plot_reward_curve(history: list[dict[str, float]], path: Path, weights: tuple[float, float]) -> Path | None:
    """Weighted reward and its two parts (mean over the step's completions) against optimizer step, as a PNG."""
    if not history:
        return None

    plt = pyplot()

    steps = [r["step"] for r in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["reward"] for r in history], "-", lw=2,
            label=f"reward = {weights[0]:g} x correct + {weights[1]:g} x format")
    ax.plot(steps, [r["correct"] for r in history], "--", label="correct (0/1)")
    ax.plot(steps, [r["format"] for r in history], ":", label="format (0/0.5/1)")
    ax.set(xlabel="optimizer step", ylabel="mean over the step's completions", title="GRPO rewards")
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=120)
    return path


def window_mean(values: list[float], first: bool, k: int) -> float | None:
    """Mean of the first or last k values (None when there are none)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    part = values[:k] if first else values[-k:]
    return sum(part) / len(part) if part else None


# ----------------------------------------------------------------------------------------------------------
# The whole run


def train_grpo(cfg: GrpoConfig) -> dict[str, Any]:
    """Read questions, render prompts, train, save the adapter atomically, write reward_curve.png and metrics.json."""
    cfg = replace(cfg, model=resolve_model(cfg.model, cfg.init_adapter).model)  # the base, checked
    out = Path(cfg.output_dir)
    procs = process_state()
    main_process = procs.is_main_process
    questions = read_mcq_file(cfg.data_path, cfg.subject)
    if cfg.subjects:
        questions = [q for q in questions if q.subject in cfg.subjects]
        if not questions:
            raise ValueError(f"no questions of subjects {cfg.subjects} in {cfg.data_path}")
    questions = questions[: cfg.max_questions]
    tokenizer = load_tokenizer(cfg.model, cfg.chat_template)
    dataset = mcq_dataset(questions, tokenizer, cfg.prompt_style, cfg.enable_thinking)
    if main_process:
        save_config(cfg, out / "config.yaml", extra={"questions": len(questions), "gpu": on_gpu(),
                                                     "processes": procs.num_processes})
        print(f"data: {len(questions)} questions from {cfg.data_path}; first prompt:\n{dataset[0]['prompt']}")

    resume = resolve_resume(cfg)
    if main_process and resume is None and last_checkpoint(out) is not None:
        print(f"note: {out} holds checkpoints; pass --resume_from_checkpoint true to continue from them")
    trainer = build_grpo_trainer(cfg, dataset, tokenizer=tokenizer)
    if main_process:
        trainer.model.print_trainable_parameters()
    t0 = time.perf_counter()
    # The checkpoint holds the adapter, optimizer, scheduler and RNG states; TRL's sampler is seeded, so the
    # resumed run draws the prompts and rollouts the uninterrupted run would have drawn.
    result = trainer.train(resume_from_checkpoint=resume)
    wall_s = time.perf_counter() - t0
    if "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")  # TRL's frozen reference copy of --init_adapter: not part of the result
    save_adapter_atomic(trainer, out)

    history = reward_history(trainer.state.log_history)
    k = max(1, len(history) // 4)  # first and last quarter of the logged steps
    column = lambda name: [r[name] for r in history]  # noqa: E731
    summary = {
        "global_step": trainer.state.global_step,
        "resumed_from": resume,
        "train_loss": result.training_loss,
        "reward_first": window_mean(column("reward"), True, k),
        "reward_last": window_mean(column("reward"), False, k),
        "correct_first": window_mean(column("correct"), True, k),
        "correct_last": window_mean(column("correct"), False, k),
        "format_first": window_mean(column("format"), True, k),
        "format_last": window_mean(column("format"), False, k),
        "window_steps": k,
        "mean_completion_tokens": window_mean(column("mean_length"), False, len(history)),
        "questions": len(questions),
        "completions": trainer.state.global_step * cfg.per_device_train_batch_size
        * cfg.gradient_accumulation_steps * procs.num_processes,
        "wall_time_s": round(wall_s, 2),
        "peak_memory_gb": round(peak_memory_gb(), 3),
    }
    if main_process:
        plot_reward_curve(history, out / "reward_curve.png", (cfg.correct_reward_weight, cfg.format_reward_weight))
        write_metrics(out, summary, detail={"rewards": history, "log_history": trainer.state.log_history},
                      seed=cfg.seed, meta_extra={"base_model": cfg.model,
                                                 "init_adapter": cfg.init_adapter})
        print(markdown_table([[key, v] for key, v in summary.items() if v is not None], ["metric", "value"]))
        print(f"adapter saved to {out} (base model: {cfg.model})")
    return summary
