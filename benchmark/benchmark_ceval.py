"""Chinese medical exam benchmark (C-Eval clinical medicine by default; CMMLU and CMExam too): base vs LoRA vs
GRPO, faithful to each exam's own evaluation and to lm-evaluation-harness, with confidence intervals and paired
tests.

    python benchmark/benchmark_ceval.py                                  # base model/qwen, 5-shot, val
    python benchmark/benchmark_ceval.py --model-type lora                # adapter in out/qwen3-4b-lora-medical
    python benchmark/benchmark_ceval.py --model-type grpo                # adapter in out/qwen3-4b-grpo-medical
    python benchmark/benchmark_ceval.py --subjects ceval/medical --split test  # submission.json for cevalbenchmark.com
    python benchmark/benchmark_ceval.py --prompt-style lm-eval           # lm-eval's ceval-valid rendering
    python benchmark/benchmark_ceval.py --scoring generate --cot --chat  # chain of thought, official extraction
    python benchmark/benchmark_ceval.py --backend openai --base-url http://localhost:8001/v1 --chat \
        --served-model lora-adapter                                      # a running vLLM server
    python benchmark/benchmark_ceval.py --compare out/benchmark/ceval-exam/clinical_medicine/base \
        out/benchmark/ceval-exam/clinical_medicine/lora                  # side by side + McNemar + PNG
    python benchmark/benchmark_ceval.py --subjects medical,general --permute_options cyclic
        # pooled C-Eval + CMMLU + CMExam medical score, the forgetting check's general set, option-order check

Writes to out/benchmark/ceval-exam/<subject or group>/<model_type>/: config.yaml, predictions.jsonl,
metrics.json (accuracy, n, 95% bootstrap CI, pooled, per exam and per subject; multi-answer and option-order
reports), results.md (and submission.json for --split test). --compare with medical and general subjects adds the
forgetting check (compare.md, forgetting.png).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import (
    config_to_dict,
    save_config,
    spread_values,
)
from medqwen.exams import is_group
from medqwen.exams.config import CevalConfig
from medqwen.exams.runner import (
    compare_exam_runs,
    expand_subjects,
    option_order_table,
    results_table,
    run_benchmark,
    submission,
    summarize_predictions,
    write_predictions,
)
from medqwen.reporting import write_metrics
from medqwen.runs import DEFAULT_MODEL, resolve_model


def subject_tag(subjects: list[str]) -> str:
    """Folder name for a subject list: the subject, the group name, or the subjects joined."""
    names = subjects if any(is_group(subjects)) else expand_subjects(subjects)
    return "+".join(names).replace("/", "-")


def make_backend(cfg: CevalConfig, model: str, adapter: str | None):
    """The scoring backend the config asks for."""
    from medqwen.exams.backends import HFBackend, OpenAIBackend, VLLMBackend

    if cfg.backend == "hf":
        return HFBackend.from_pretrained(model, adapter, chat_template=cfg.chat_template, device=cfg.device,
                                         dtype=cfg.dtype, batch_size=cfg.batch_size, reuse_prefix=cfg.reuse_prefix,
                                         compile=cfg.compile, kernels=cfg.kernels, progress=True)
    if cfg.backend == "vllm":
        backend = VLLMBackend(model, adapter)
        if cfg.chat:
            from medqwen.chat import load_chat_template

            backend.tokenizer.chat_template = load_chat_template(cfg.chat_template)
        return backend
    tokenizer = None
    if cfg.chat:  # prompts are rendered here with the same template file the server was started with
        from medqwen.chat import load_tokenizer

        tokenizer = load_tokenizer(model, cfg.chat_template)
    return OpenAIBackend(cfg.base_url, cfg.served_model, api_key=cfg.api_key, timeout_s=cfg.timeout_s,
                         tokenizer=tokenizer, prompts_per_request=cfg.batch_size)


def main(cfg: CevalConfig) -> dict:
    root = Path("out/benchmark/ceval-exam") / subject_tag(cfg.subjects)
    if cfg.compare:
        table, result = compare_exam_runs(cfg.compare, cfg.output_dir or root / "compare", cfg.n_bootstrap, cfg.seed)
        print(table)
        return result
    out_dir = Path(cfg.output_dir or root / cfg.model_type)
    if cfg.backend == "openai" and not cfg.chat:  # the server holds the weights; no tokenizer needed here
        model, adapter = cfg.model or DEFAULT_MODEL, None
    else:
        choice = resolve_model(cfg.model, cfg.run_dir, cfg.model_type)
        model, adapter = choice.model, choice.adapter
    save_config(cfg, out_dir / "config.yaml", extra={"resolved_model": model, "resolved_adapter": adapter})
    print(f"{', '.join(cfg.subjects)} {cfg.split}, {cfg.k_shot}-shot, {cfg.prompt_style} prompt, {cfg.scoring}: {model}"
          f"{' + ' + adapter if adapter else ''} -> {out_dir}", flush=True)

    backend = make_backend(cfg, model, adapter)
    max_new_tokens = cfg.max_new_tokens or (512 if cfg.cot else 16)
    dirs = {"ceval": cfg.data_dir, "cmmlu": cfg.cmmlu_dir, "cmexam": cfg.cmexam_dir}
    predictions, timing = run_benchmark(backend, dirs, cfg.subjects, cfg.split, cfg.k_shot, cfg.limit,
                                        permute=cfg.permute_options, skip_missing=cfg.skip_missing,
                                        skip_invalid=cfg.skip_invalid, style=cfg.prompt_style, scoring=cfg.scoring,
                                        cot=cfg.cot, chat=cfg.chat, max_new_tokens=max_new_tokens,
                                        enable_thinking=cfg.enable_thinking)
    write_predictions(predictions, out_dir / "predictions.jsonl")
    summary = summarize_predictions(predictions, cfg.n_bootstrap, cfg.seed)
    summary.update(model_type=cfg.model_type, model=model, adapter=adapter, split=cfg.split, k_shot=cfg.k_shot,
                   prompt_style=cfg.prompt_style, scoring=cfg.scoring, chat=cfg.chat, cot=cfg.cot, **timing)
    if hasattr(backend, "kernels"):
        summary["kernels"] = backend.kernels  # hf: what "auto" resolved to
    if cfg.split == "test":
        (out_dir / "submission.json").write_text(json.dumps(submission(predictions), ensure_ascii=False, indent=2),
                                                 encoding="utf-8")
    per_subject = summary.pop("per_subject")
    write_metrics(out_dir, summary, detail=per_subject, seed=cfg.seed, meta_extra={"config": config_to_dict(cfg)})
    table = results_table({**summary, "per_subject": per_subject})
    if "option_order" in summary:
        table += "\n\nOption-order check (every cyclic rotation of the options):\n\n" + \
            option_order_table(summary["option_order"])
    if timing["missing_subjects"]:
        table += f"\n\nleft out (no data; --skip_missing): {', '.join(timing['missing_subjects'])}"
    (out_dir / "results.md").write_text(table + "\n", encoding="utf-8")
    print(f"\n{table}\n\n{len(predictions)} questions in {timing['seconds']:.1f} s "
          f"({timing['questions_per_s']:.2f} questions/s); outputs in {out_dir}/")
    return summary


if __name__ == "__main__":
    # `--compare a b c` as argparse wants it
    run_script(CevalConfig, main, argv=spread_values(sys.argv[1:]))
