"""The open-ended evaluation's config (eval/eval_{base,lora,grpo}.py)."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import (
    DeviceFields,
    ModelChoiceFields,
    ModelFields,
    RunFields,
    ServerFields,
    ThinkingFields,
    _f,
    like,
)


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
