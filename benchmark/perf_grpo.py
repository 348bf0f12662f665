"""GRPO speed: time one optimizer step of a GRPO preset, split into rollouts, log-prob passes and policy training.

A randomly initialised model of a real shape (speed and memory do not depend on weight values) runs TRL's
GRPOTrainer with the preset's settings (LoRA, group size, completion length, batch x accumulation of one GPU) on
the shipped multiple-choice prompts, rendered by the real tokenizer. Each rollout engine runs in its own process
and reports: seconds per optimizer step and per part, rollout tokens/s, the decode limit of this GPU (every
weight and the KV cache read once per decoded token, at the measured copy bandwidth) and the share of it reached,
the training part's MFU and peak memory. Random weights never sample the end-of-turn token on purpose, so every
completion runs to max_completion_length: the slowest case of a real run.

    # one GPU's share of configs/qwen3-4b/grpo_2x24gb.yaml (8 completions x 4 micro-batches), Qwen3-4B shape
    python benchmark/perf_grpo.py --variants plain,graph
    # the same under a hard 24 GiB cap (does the preset fit a 24 GB card?)
    python benchmark/perf_grpo.py --variants graph --memory_cap_gib 24
    # another batch split: a variant takes preset fields after a colon
    python benchmark/perf_grpo.py --variants "graph:per_device_train_batch_size=16:gradient_accumulation_steps=2"
    # CPU smoke run (CI): tiny model, 2 prompts x 4 completions of 8 tokens
    python benchmark/perf_grpo.py --tiny --output_dir out/perf-grpo-tiny

Writes results.json, results.md, config.yaml, metrics.json and variants.log to --output_dir and prints the table.
The tokenizer comes from model/qwen (or only its tokenizer files in model/qwen3-tokenizer), as in perf_train.py.
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import REPO_ROOT, resolve_config, save_config
from medqwen.perf.config import PerfGrpoConfig
from medqwen.perf.isolate import print_result, run_variant
from medqwen.reporting import markdown_table, write_metrics
from medqwen.train.config import GrpoConfig

# The tiny CPU run: steps of 2 prompts x 4 completions of 8 tokens, so a step takes seconds.
TINY = {"num_generations": 4, "per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
        "max_completion_length": 8}


def grpo_variant_config(pcfg: PerfGrpoConfig, spec: str, base: dict) -> GrpoConfig:
    """The GrpoConfig of a variant spec (`plain`, `graph`, `graph:field=value:...`) on the preset."""
    name, _, extra = spec.partition(":")
    overrides = dict(item.partition("=")[::2] for item in filter(None, extra.split(":")))
    return resolve_config(GrpoConfig, cli={"config": str(REPO_ROOT / pcfg.preset), **base, "rollouts": name,
                                           **{k.strip(): v.strip() for k, v in overrides.items()}})


def run_one(pcfg: PerfGrpoConfig, spec: str) -> dict:
    """Build the GRPO trainer for one variant around a random model and time its steps (in a child process)."""
    import torch

    from medqwen.chat import load_tokenizer
    from medqwen.perf import (
        benchmark_model,
        benchmark_tokenizer_dir,
        decode_bytes_per_step,
        forward_flops,
        lora_train_flops,
        memory_bandwidth_gbs,
    )
    from medqwen.perf.grpo import GrpoStepTimer
    from medqwen.train.common import peak_memory_gb
    from medqwen.train.grpo import build_grpo_trainer, mcq_dataset
    from medqwen.train.mcq import read_mcq_file

    cuda = torch.cuda.is_available()
    if cuda and pcfg.memory_cap_gib > 0:  # before anything is allocated: the cap holds for the whole run
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, pcfg.memory_cap_gib * 2**30 / total))
    tok_dir = benchmark_tokenizer_dir(pcfg.tokenizer, pcfg.shape)
    tokenizer = load_tokenizer(tok_dir)
    base = {"model": str(tok_dir), "output_dir": tempfile.mkdtemp(prefix="perf-grpo-"), "report_to": "none",
            "save_steps": 10**6, "seed": pcfg.seed, "bf16": cuda, **(TINY if pcfg.shape == "tiny" else {})}
    cfg = grpo_variant_config(pcfg, spec, base)
    questions = [q for q in read_mcq_file(REPO_ROOT / cfg.data_path)
                 if not cfg.subjects or q.subject in cfg.subjects]
    dataset = mcq_dataset(questions, tokenizer, cfg.prompt_style, cfg.enable_thinking)
    bandwidth = memory_bandwidth_gbs()  # before the model: 4 GiB of scratch
    model = benchmark_model(pcfg.shape, tokenizer, pcfg.seed)
    trainer = build_grpo_trainer(cfg, dataset, model=model, tokenizer=tokenizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rows = GrpoStepTimer(trainer, sync=torch.cuda.synchronize if cuda else None).run(pcfg.warmup_steps,
                                                                                        pcfg.steps)
    median = lambda key: statistics.median(r[key] for r in rows)  # noqa: E731
    completions = [n for r in rows for n in r["completion_lengths"]]
    prompts = [n for r in rows for n in r["prompt_lengths"]]
    rollout_tokens = sum(completions)
    rollout_s = sum(r["rollout_s"] for r in rows)
    config = model.config
    # the decode limit at this batch: weights + the KV cache at the mean context, read once per decoded token
    batch = statistics.mean(r["rollout_batch"] for r in rows)
    context = statistics.mean(prompts) + statistics.mean(completions) / 2
    limit = batch / (decode_bytes_per_step(config, round(batch), round(context)) / (bandwidth * 1e9)) if bandwidth \
        else None
    train_flops = sum(lora_train_flops(config, [p + c for p, c in zip(r["prompt_lengths"], r["completion_lengths"])],
                                       cfg.lora_r, cfg.lora_target_modules)
                      + forward_flops(config, r["logprob_lengths"]) for r in rows)
    train_s = sum(r["policy_s"] + r["logprob_s"] for r in rows)
    return {
        "variant": spec, "rollouts": cfg.rollouts,
        "completions_per_step": len(completions) / len(rows),
        "prompts_per_step": len(completions) / len(rows) / cfg.num_generations,
        "max_completion_length": cfg.max_completion_length,
        "mean_prompt_tokens": statistics.mean(prompts), "mean_completion_tokens": statistics.mean(completions),
        "step_s": median("seconds"), "rollout_s": median("rollout_s"), "logprob_s": median("logprob_s"),
        "score_s": median("score_s"), "policy_s": median("policy_s"),
        "rollout_tok_s": rollout_tokens / rollout_s,
        "decode_limit_tok_s": limit, "bandwidth_gbs": bandwidth,
        "train_tflops": train_flops / train_s / 1e12,
        "memory_cap_gib": pcfg.memory_cap_gib if cuda and pcfg.memory_cap_gib > 0 else None,
        "peak_allocated_gib": peak_memory_gb() if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "peak_rss_gib": None if cuda else peak_memory_gb(),
        "wall_s": time.perf_counter() - t0,
        "settings": {k: getattr(cfg, k) for k in ("num_generations", "per_device_train_batch_size",
                                                   "gradient_accumulation_steps", "max_completion_length", "beta",
                                                   "gradient_checkpointing", "lora_r", "temperature")},
        "steps": [{k: v for k, v in r.items() if not k.endswith("_lengths")} for r in rows],
    }


def write_grpo_report(results: list[dict], peak: float | None, out: Path, seed: int) -> str:
    """The Markdown table (returned and written to results.md), results.json and metrics.json."""
    # every variant of one run shares its memory cap, so the plain row is the baseline under the same cap
    plain = next((r for r in results if r.get("rollouts") == "plain" and "step_s" in r), None)
    table = []
    for r in results:
        if "step_s" not in r:
            table.append([r["variant"], r.get("error")] + [""] * 12)
            continue
        mem = r["peak_allocated_gib"] if r["peak_allocated_gib"] is not None else r["peak_rss_gib"]
        limit = r["decode_limit_tok_s"]
        table.append([
            r["variant"] + (f", {r['memory_cap_gib']:g} GiB cap" if r["memory_cap_gib"] else ""),
            f"{r['completions_per_step']:.0f} x {r['mean_completion_tokens']:.0f}",
            f"{r['step_s']:.2f}", f"{r['rollout_s']:.2f}", f"{r['logprob_s']:.2f}", f"{r['score_s']:.2f}",
            f"{r['policy_s']:.2f}", round(r["rollout_tok_s"]),
            f"{round(limit):,} ({100 * r['rollout_tok_s'] / limit:.0f}%)" if limit else "n/a",
            f"{100 * r['train_tflops'] / peak:.1f}%" if peak else "n/a",
            f"{mem:.1f}" + (f" ({r['peak_reserved_gib']:.1f})" if r["peak_reserved_gib"] else ""),
            f"{plain['rollout_s'] / r['rollout_s']:.2f}x" if plain else "n/a",
            f"{plain['step_s'] / r['step_s']:.2f}x" if plain else "n/a"])
    headers = ["variant", "completions/step x mean tokens", "step s", "rollout s", "log-prob s", "scoring s",
               "policy fwd/bwd + optimizer s", "rollout tok/s", "decode limit tok/s (reached)", "training MFU",
               "peak GiB alloc (reserved)", "rollout vs plain", "step vs plain"]
    md = markdown_table(table, headers)
    note = ("\nMedians over the timed optimizer steps of one process (one GPU's share of the preset). Random weights "
            "never stop early: every completion runs to max_completion_length, the slowest case. *decode limit*: "
            "completions decoded together / (bytes of every weight and of the KV cache at the mean context) x "
            "measured copy bandwidth. *training MFU*: policy forward/backward and log-prob FLOPs "
            "(medqwen.perf.lora_train_flops, forward_flops) over their seconds"
            + (f", against a bf16 matmul peak of {peak:.0f} TFLOP/s." if peak else "; no GPU, no peak."))
    (out / "results.md").write_text(md + note + "\n", encoding="utf-8")
    import json

    (out / "results.json").write_text(json.dumps({"peak_tflops": peak, "results": results}, indent=2),
                                      encoding="utf-8")
    write_metrics(out, {r["variant"]: {k: r.get(k) for k in ("step_s", "rollout_tok_s", "peak_allocated_gib",
                                                              "error")} for r in results},
                  detail=results, seed=seed, meta_extra={"peak_tflops": peak})
    return md + note


def main(pcfg: PerfGrpoConfig) -> list[dict]:
    from medqwen.perf import matmul_peak_tflops

    if pcfg.tiny:
        pcfg.shape = "tiny"
    if pcfg.run_one:
        print_result(run_one(pcfg, pcfg.run_one))
        return []
    out = Path(pcfg.output_dir)
    save_config(pcfg, out / "config.yaml")
    for spec in pcfg.variants:
        grpo_variant_config(pcfg, spec, {})  # a typo fails here, before a process starts
    peak = pcfg.peak_tflops or matmul_peak_tflops()
    results = []
    for spec in pcfg.variants:
        row = {"variant": spec} | run_variant(__file__, sys.argv[1:], spec, out / "variants.log",
                                             pcfg.variant_timeout_s)
        results.append(row)
        print(f"{spec}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                      for k, v in row.items() if k not in ("steps", "settings")), flush=True)
        md = write_grpo_report(results, peak, out, pcfg.seed)  # after every variant: a killed run keeps its rows
    print(md)
    return results


if __name__ == "__main__":
    run_script(PerfGrpoConfig, main, echo=lambda pcfg: not pcfg.run_one)  # the variants' processes stay quiet
