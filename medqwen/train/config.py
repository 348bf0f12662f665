"""The training stages' configs: LoRA SFT (trainer/train_lora.py), GRPO (trainer/train_grpo.py), merging
(trainer/merge_lora.py) and multiple-choice conversion (data/convert_mcq.py), with the fields they share."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import ModelFields, RunFields, SamplingFields, ThinkingFields, _f, like

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]



@dataclass
class LoraFields:
    lora_r: int = _f(8, "LoRA rank.", at_least=1)
    lora_alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.", at_least=0, below=1)
    lora_target_modules: list[str] = _f(LORA_TARGETS, "Linear layers that get LoRA adapters (names in the model).")


@dataclass
class TrainerFields(LoraFields, RunFields, ModelFields):
    """What LoRA SFT and GRPO share: the model, the LoRA, the optimizer schedule, precision, logging."""

    data_path: str = _f("data/lora_medical_merged.jsonl", "Conversation JSONL ('conversations' or 'messages').")
    output_dir: str = _f("out/qwen3-4b-lora-medical", "Run folder: adapter, checkpoints, logs/, config.yaml.")
    num_train_epochs: float = _f(2.0, "Passes over the training split.", above=0)
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: run num_train_epochs). For smoke runs.")
    per_device_train_batch_size: int = _f(8, "Sequences per device per micro-batch.", at_least=1)
    gradient_accumulation_steps: int = _f(8, "Micro-batches per optimizer step "
                                             "(effective batch = this x batch x processes).", at_least=1)
    learning_rate: float = _f(1e-4, "Peak learning rate of the AdamW optimizer.", above=0)
    lr_scheduler_type: str = _f("linear", "Learning-rate schedule (transformers name: linear, cosine, constant...).")
    warmup_steps: float = _f(0.0, "Warm-up: optimizer steps, or a fraction of all steps when < 1.", at_least=0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.", above=0)
    bf16: bool = _f(True, "bf16 mixed precision (turned off automatically on CPU).")
    gradient_checkpointing: bool = _f(True, "Recompute activations to save memory (turned off automatically on CPU).")
    attn_implementation: str | None = _f(None, "Attention kernel: sdpa, eager, flash_attention_2... (None: "
                                               "transformers' default).")
    logging_steps: int = _f(10, "Log a line every N optimizer steps.", at_least=1)
    save_total_limit: int = _f(2, "Checkpoints kept on disk.", at_least=1)
    report_to: str = _f("tensorboard", "Logger for metrics (TensorBoard writes to <output_dir>/logs; 'none' off).")
    resume_from_checkpoint: str | None = _f(None, "'true' resumes from the last complete checkpoint in "
                                                  "output_dir; a path resumes from that checkpoint.")


@dataclass
class FastPathFields:
    """The LoRA trainer's fast path (medqwen/train/fast_path.py: which settings; medqwen/kernels/fused_lora.py: the
    kernels)."""

    fast_path: str = _f("auto", "How a step is computed (never which step: the same conversations, order and loss "
                                "normalisation): auto (on a CUDA GPU the fastest settings that fit its memory, "
                                "else off), off (the plain path: exactly the fields given), or a "
                                "named set: speed (H200), 80gb, 24gb; medqwen.train.fast_path.FAST_PATHS. A named set "
                                "overrides the fields below and makes each micro-batch the process's whole share "
                                "of the step.", choices=["auto", "off", "speed", "80gb", "24gb"])
    padding_free: bool = _f(False, "Concatenate each micro-batch's conversations into one row (positions restart "
                                   "per conversation, no pad tokens); unlike --packing the micro-batch keeps "
                                   "per_device_train_batch_size whole conversations, so the recipe is unchanged.")
    max_tokens_per_forward: int = _f(0, "With padding_free: run a micro-batch longer than this many tokens as "
                                        "several forward/backward passes split at conversation boundaries; bounds "
                                        "activation memory, same gradient (0: one pass, or the fast path's own "
                                        "budget).", at_least=0)
    fused_lora: bool = _f(False, "Fast path: LoRA layers as one fused autograd function (same math as PEFT, "
                                 "tested; not under FSDP/DeepSpeed; false: PEFT's own forward).")
    compile_layers: bool = _f(False, "Fast path: torch.compile each decoder layer (lengths vary, so this beats "
                                     "whole-model --torch_compile).")
    recompute_layers: int = _f(-1, "With gradient_checkpointing: recompute only the first N decoder layers and "
                                   "keep the others' activations (-1: all layers).", at_least=-1)
    activation_memory_budget: float = _f(1.0, "With compile_layers: fraction of a layer's activations the compiler "
                                              "keeps for backward; below 1 it recomputes the cheapest ops "
                                              "(norms, activations, dropout) instead of whole layers.",
                                         above=0, at_most=1)
    lora_keep_dropped_inputs: list[str] = _f([], "Fused LoRA layers (e.g. q_proj) that keep their dropped-out "
                                                 "input for backward instead of redoing the dropout: faster, 2 bytes "
                                                 "more per input feature and token (least where layers share an "
                                                 "input: q/k/v, gate/up).")
    deferred_metrics: bool = _f(False, "Keep TRL's training metrics (entropy, token accuracy, tokens seen) on the "
                                       "device and reduce and read them at logging steps, not after every forward "
                                       "(needed under DDP when micro-batches split into forwards; no host waits); "
                                       "same loss and logged values. Fast paths turn it on.")
    eager_dropout_rng: bool = _f(True, "With compile_layers and activation_memory_budget 1: draw dropout masks "
                                       "with torch's own kernel (faster; the masks eager training draws) "
                                       "instead of code the compiler generates (process-wide).")


@dataclass
class TrainConfig(FastPathFields, TrainerFields):
    """trainer/train_lora.py: LoRA SFT (TRL SFTTrainer + PEFT) with assistant-only loss on conversation JSONL."""

    chat_template: str = like(ModelFields, "chat_template",
                              help="Chat template (with generation markers) used for training.")
    max_seq_len: int = _f(1024, "Longest training sequence (tokens); longer conversations are truncated.", at_least=1)
    per_device_eval_batch_size: int = _f(8, "Sequences per device per evaluation batch.", at_least=1)
    weight_decay: float = _f(0.0, "AdamW weight decay.", at_least=0)
    assistant_only_loss: bool = _f(True, "Train only on assistant replies (the template's generation-marked spans).")
    packing: bool = _f(False, "Pack conversations into max_seq_len rows, padding-free (positions restart per "
                              "conversation; attention and loss never cross conversations).")
    attn_implementation: str | None = like(
        TrainerFields, "attn_implementation",
        help="Attention kernel: sdpa, eager, flash_attention_2, varlen (packed rows through FlashAttention varlen; "
             "medqwen.kernels.packed_attention)... (None: varlen with --packing, else transformers' default).")
    use_liger_kernel: bool = _f(False, "Liger Triton kernels (GPU only; needs the liger-kernel package).")
    torch_compile: bool = _f(False, "Compile the model with torch.compile.")
    eval_ratio: float = _f(0.1, "Fraction of conversations held out for validation (0: no evaluation).",
                           at_least=0, below=1)
    eval_steps: int = _f(50, "Evaluate and checkpoint every N optimizer steps.", at_least=1)
    save_total_limit: int = like(TrainerFields, "save_total_limit",
                                 help="Checkpoints kept on disk (the best one is always kept).")
    logging_steps: int = like(TrainerFields, "logging_steps",
                              help="Log a line (loss, lr, tokens/s, ETA) every N optimizer steps.")
    early_stopping_patience: int = _f(0, "Stop after N evaluations without eval-loss improvement (0: off).",
                                      at_least=0)
    dataloader_num_workers: int = _f(0, "Background processes that collate batches.", at_least=0)
    seed: int = like(RunFields, "seed", help="Random seed (data split, LoRA init, shuffling).")


@dataclass
class MergeConfig(ModelFields):
    """trainer/merge_lora.py: merge a LoRA adapter into its base model and save a full model folder."""

    adapter: str = _f("out/qwen3-4b-lora-medical", "LoRA run folder (a trainer output_dir) or adapter folder.")
    model: str | None = like(ModelFields, "model", None, help="Base model folder (None: read from the run's "
                                                              "config.yaml).")
    output_dir: str | None = _f(None, "Where the merged model goes (None: <adapter>-merged).")
    dtype: str = _f("auto", "Saved weight dtype: auto (the base model's), bfloat16, float16 or float32.",
                    choices=["auto", "bfloat16", "float16", "float32"])
    chat_template: str = like(ModelFields, "chat_template", help="Chat template saved with the merged model.")


@dataclass
class GrpoConfig(SamplingFields, ThinkingFields, TrainerFields):
    """trainer/train_grpo.py: GRPO (TRL GRPOTrainer + LoRA) on multiple-choice questions with verifiable rewards:
    the option the benchmark's parser reads from the reply is correct, and the reply has the answer format."""

    model: str | None = like(ModelFields, "model", None, help="Base model folder (HF format) or hub id (None: "
                                                              "model/qwen, or with --init_adapter the base named in "
                                                              "its run's config.yaml).")
    init_adapter: str | None = _f(None, "SFT LoRA run folder (a train_lora.py output_dir) to continue training; "
                                        "None: a fresh LoRA on the base model.")
    data_path: str = _f("data/grpo_mcq_sample.jsonl", "Multiple-choice questions: MCQ JSONL "
                                                      "(data/convert_mcq.py writes it), or a C-Eval/CMMLU CSV.")
    subject: str | None = _f(None, "Subject of a CSV's questions (C-Eval id such as clinical_medicine; None: "
                                   "from the file name). JSONL lines carry their own.")
    subjects: list[str] = _f([], "Train only on questions of these subjects (repeatable; empty: all).")
    output_dir: str = like(TrainerFields, "output_dir", "out/qwen3-4b-grpo-medical")
    chat_template: str = like(ModelFields, "chat_template",
                              help="Chat template that renders the prompts (the one used everywhere).")
    prompt_style: str = _f("official", "C-Eval prompt style, as in benchmark_ceval.py (zero-shot, chat).",
                           choices=["official", "lm-eval"])
    max_questions: int | None = _f(None, "Use only the first N questions (smoke runs).", at_least=1)
    num_generations: int = _f(8, "Group size G: completions sampled per prompt; advantages are relative "
                                 "within the group.", at_least=2)
    max_completion_length: int = _f(128, "Longest sampled completion (tokens).", at_least=1)
    temperature: float = like(SamplingFields, "temperature", 1.0, help="Sampling temperature of the rollouts.")
    top_p: float = like(SamplingFields, "top_p", 1.0, help="Nucleus sampling probability mass of the rollouts.")
    beta: float = _f(0.04, "KL coefficient against the reference policy (the starting adapter; 0: no reference "
                           "pass, faster).", at_least=0)
    correct_reward_weight: float = _f(1.0, "Weight of the correctness reward (1 when the parsed option is the "
                                           "answer, else 0).")
    format_reward_weight: float = _f(0.2, "Weight of the format reward (1: reply opens with the option letter; "
                                          "0.5: the letter is found by the fallback rules; 0: unparseable).")
    loss_type: str = _f("dapo", "TRL loss aggregation.", choices=["grpo", "dr_grpo", "dapo", "bnpo"])
    scale_rewards: str = _f("group", "Advantage scaling: by the group's reward std, the batch's, or none.",
                            choices=["group", "batch", "none"])
    num_train_epochs: float = like(TrainerFields, "num_train_epochs", 1.0, help="Passes over the questions.")
    per_device_train_batch_size: int = like(TrainerFields, "per_device_train_batch_size",
                                            help="Completions per device per micro-batch (a multiple of "
                                                 "num_generations, together with gradient accumulation).")
    gradient_accumulation_steps: int = like(TrainerFields, "gradient_accumulation_steps", 4,
                                            help="Micro-batches per optimizer step (completions per step = this x "
                                                 "batch x processes; prompts per step = that / num_generations).")
    learning_rate: float = like(TrainerFields, "learning_rate", 1e-5)
    lr_scheduler_type: str = like(TrainerFields, "lr_scheduler_type", "constant")
    lora_r: int = like(LoraFields, "lora_r", help="LoRA rank (fresh adapter only; --init_adapter keeps its own).")
    lora_last_layers: int | None = _f(None, "LoRA only in the last N transformer layers (None: all). Backward "
                                            "then stops at layer L-N: about twice as fast on CPU.", at_least=1)
    rollouts: str = _f("auto", "How transformers generates the rollouts (without --use_vllm): graph (static KV "
                               "cache, each decode step replayed as one CUDA graph; eager on CPU), compiled "
                               "(transformers' generate with a static cache and its compiled decode step), plain "
                               "(TRL's default: dynamic cache, eager), auto (graph on a CUDA GPU, else plain).",
                       choices=["auto", "graph", "compiled", "plain"])
    use_vllm: bool = _f(False, "Generate rollouts with vLLM (GPU machines with the vllm package).")
    vllm_mode: str = _f("colocate", "colocate: vLLM inside the training process; server: a `trl vllm-serve` "
                                    "process.", choices=["colocate", "server"])
    vllm_gpu_memory_utilization: float = _f(0.3, "GPU memory fraction vLLM may take in colocate mode.",
                                            above=0, at_most=1)
    vllm_server_base_url: str | None = _f(None, "URL of `trl vllm-serve` in server mode (None: localhost:8000).")
    logging_steps: int = like(TrainerFields, "logging_steps", 1, help="Log a line (reward, correct, format, KL, "
                                                                      "completion length) every N steps.")
    save_steps: int = _f(50, "Write a checkpoint every N optimizer steps.", at_least=1)
    log_completions: bool = _f(False, "Print a table of sampled completions at each logging step.")
    seed: int = like(RunFields, "seed", help="Random seed (question order, LoRA init, sampling).")


@dataclass
class McqConvertConfig:
    """data/convert_mcq.py: multiple-choice questions (C-Eval/CMMLU CSV, JSONL) -> MCQ JSONL for GRPO."""

    input: list[str] = _f([], "Input file(s) (repeatable): .csv (C-Eval or CMMLU layout) or .jsonl "
                              "(question/options/answer).")
    output: str = _f("data/grpo_mcq.jsonl", "MCQ JSONL to write: id, subject, question, options [A-D], answer.")
    subject: str | None = _f(None, "Subject for CSV rows (None: from the file name, e.g. clinical_medicine_val.csv "
                                   "-> clinical_medicine).")
