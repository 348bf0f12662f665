"""Training speed: time our trainer's real train step (medqwen.train.sft.build_trainer) for named recipes.

A randomly initialised model of a real shape (speed and memory do not depend on weight values) trains LoRA on
conversations of a realistic length distribution; every variant runs in its own process (an OOM ends only
that variant) and reports real (non-pad) tok/s, computed (padded) tok/s, MFU, peak memory, the ratio to the
original recipe, conversations and tokens per optimizer step, and whether each optimizer step trained on the
same conversations as the original's (a variant whose steps differ trains a different recipe: not a speed-up).
Recipes: medqwen.perf.VARIANTS; the presets are configs/qwen3-4b/*.yaml.

    # one GPU, Qwen3-4B shape, synthetic lognormal lengths (median 280, capped at 1024)
    python benchmark/perf_train.py --output_dir out/perf
    python benchmark/perf_train.py --variants original,speed,24gb
    python benchmark/perf_train.py --variants "24gb:per_device_train_batch_size=4:recompute_layers=20"
    # real lengths without the data: drawn from the medical data's histogram in the repository
    python benchmark/perf_train.py --variants original,speed,24gb --lengths real
    # the 24 GB settings under a hard 24 GiB cap, and one process's share of the two-card preset
    python benchmark/perf_train.py --variants 24gb,2x24gb-share --lengths real --memory_cap_gib 24
    # real conversations: tokenized with the model's tokenizer and our template
    python benchmark/perf_train.py --data data/lora_medical_merged.jsonl
    # CPU smoke run (CI): tiny model, a few steps; the fast presets run with their CUDA-only parts off
    python benchmark/perf_train.py --tiny --output_dir out/perf-tiny
    # two GPUs: each variant on one GPU, then DDP and FSDP over two (accelerate launch); scaling vs one GPU
    python benchmark/perf_train.py --variants speed,24gb --launchers single,ddp,fsdp --processes 2

Writes results.json, results.md, config.yaml, metrics.json and variants.log (each variant's output) to
--output_dir; prints the table. The tokenizer comes from model/qwen; a machine without the weights needs only
the tokenizer files (vocab.json, merges.txt, tokenizer_config.json, config.json) in model/qwen3-tokenizer.
"""

import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import save_config
from medqwen.distributed import is_main_process
from medqwen.perf.config import PerfTrainConfig
from medqwen.perf.isolate import print_result, run_variant


def run_one(pcfg: PerfTrainConfig, spec: str) -> dict:
    """Build the trainer for one variant around a random model and time it (runs in a child process; under
    accelerate launch in each of its processes, and the main process returns the sums over all of them)."""
    import torch
    from datasets import Dataset

    from medqwen.chat import load_tokenizer
    from medqwen.distributed import gather, local_rank, parallel_mode, world_size
    from medqwen.perf import (
        benchmark_conversations,
        benchmark_model,
        benchmark_tokenizer_dir,
        length_summary,
        lora_train_flops,
        merge_process_steps,
        step_fingerprint,
        time_trainer,
        variant_config,
    )
    from medqwen.train.common import peak_memory_gb
    from medqwen.train.fast_path import CUDA_ONLY
    from medqwen.train.sft import build_trainer

    cuda = torch.cuda.is_available()
    processes = world_size()
    if cuda and pcfg.memory_cap_gib > 0:  # before anything is allocated: the cap holds for the whole run
        total = torch.cuda.get_device_properties(local_rank()).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, pcfg.memory_cap_gib * 2**30 / total), local_rank())
    tok_dir = benchmark_tokenizer_dir(pcfg.tokenizer, pcfg.shape)
    tokenizer = load_tokenizer(tok_dir)
    out = tempfile.mkdtemp(prefix="perf-")
    base = {"model": str(tok_dir), "output_dir": out, "report_to": "none",
            "max_seq_len": pcfg.max_seq_len, "eval_ratio": 0.0, "logging_steps": 10**6, "eval_steps": 10**6,
            "seed": pcfg.seed}
    if pcfg.shape == "tiny":  # CPU smoke run: steps of 8 conversations (4 x 2) instead of 64 (8 x 8)
        base.update(per_device_train_batch_size=4, gradient_accumulation_steps=2)
    cfg = variant_config(spec, base)
    from medqwen.train.fast_path import FAST_PATHS

    # The step's composition does not depend on kernels: without CUDA a variant runs without its CUDA-only parts
    # (a fast path's are already off after resolve_fast_path) and says so.
    wanted = FAST_PATHS.get(cfg.fast_path, {})
    cuda_only_off = [] if cuda else [k for k in CUDA_ONLY if getattr(cfg, k) or wanted.get(k)]
    if cuda_only_off:
        cfg = replace(cfg, **{k: False for k in cuda_only_off})
    # The same dataset for every variant and launcher (its size sets the sampler's order and how BFD packs),
    # large enough for the packed variants' steps on --processes processes; every process builds it and the
    # Trainer hands each its own share of the batches.
    n = pcfg.conversations or (pcfg.warmup_steps + pcfg.steps + 2) * 256 * max(1, pcfg.processes)
    conversations = benchmark_conversations(tokenizer, n, pcfg.median_len, pcfg.max_seq_len, pcfg.seed, pcfg.data,
                                            pcfg.lengths)
    dataset = Dataset.from_list([{"messages": c} for c in conversations])
    model = benchmark_model(pcfg.shape, tokenizer, pcfg.seed)
    trainer = build_trainer(cfg, dataset, None, model=model, tokenizer=tokenizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    timing = time_trainer(trainer, pcfg.warmup_steps, pcfg.steps, cuda=cuda, profile_step=pcfg.profile)
    if "profile" in timing and is_main_process():
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)
        (Path(pcfg.output_dir) / f"profile_{name}.txt").write_text(timing["profile"], encoding="utf-8")
    memory = {"peak_allocated_gib": peak_memory_gb() if cuda else None,
              "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
              "peak_rss_gib": None if cuda else peak_memory_gb()}
    per_process = gather({"timed": timing["timed"], "warmup": timing["warmup"], **memory})
    timed = merge_process_steps([p["timed"] for p in per_process])
    warmup = merge_process_steps([p["warmup"] for p in per_process])
    seconds = sum(r["seconds"] for r in timed)
    real, computed = sum(r["real_tokens"] for r in timed), sum(r["computed_tokens"] for r in timed)
    flops = sum(lora_train_flops(model.config, r["lengths"], cfg.lora_r, cfg.lora_target_modules) for r in timed)
    worst = lambda key: None if memory[key] is None else max(p[key] for p in per_process)  # noqa: E731
    return {
        "variant": spec,
        "processes": processes,
        **parallel_mode(trainer),
        "real_tok_s": real / seconds,  # all processes together
        # steady state: one slow step (a recompile for a new shape, say; rare over a long run) does not move it
        "median_step_tok_s": sorted(r["real_tokens"] / r["seconds"] for r in timed)[len(timed) // 2],
        "computed_tok_s": computed / seconds,
        "padding_fraction": 1 - real / computed,
        "tflops": flops / seconds / 1e12,
        "step_s": sorted(r["seconds"] for r in timed)[len(timed) // 2],
        "conversations_per_step": sum(r["sequences"] for r in timed) / len(timed),
        "tokens_per_step": real / len(timed),
        # which conversations each optimizer step (warm-up included) trained on: equal to the original's = same step
        "step_fingerprints": [step_fingerprint(r["keys"]) for r in warmup + timed],
        "conversations_per_step_each": [r["sequences"] for r in warmup + timed],
        # what each step trained to (the first step's loss is the model's before any update: equal across variants)
        "step_losses": [round(r["loss"], 5) for r in warmup + timed],
        "step_seconds": [round(r["seconds"], 4) for r in warmup + timed],
        "fast_path": cfg.fast_path,
        "cuda_only_off": cuda_only_off,
        "memory_cap_gib": pcfg.memory_cap_gib if cuda and pcfg.memory_cap_gib > 0 else None,
        # the most any one process (GPU) held; every process's own peak in ..._per_process
        "peak_allocated_gib": worst("peak_allocated_gib"),
        "peak_reserved_gib": worst("peak_reserved_gib"),
        "peak_rss_gib": worst("peak_rss_gib"),
        "peak_allocated_gib_per_process": [p["peak_allocated_gib"] for p in per_process],
        "warmup_s": sum(r["seconds"] for r in warmup),
        "wall_s": time.perf_counter() - t0,
        "lengths": length_summary([n for r in timed for n in r["lengths"]]),
        "train_config": {k: getattr(cfg, k) for k in ("packing", "padding_free", "max_tokens_per_forward",
                                                       "per_device_train_batch_size",
                                                       "gradient_accumulation_steps", "gradient_checkpointing",
                                                       "recompute_layers", "attn_implementation", "use_liger_kernel",
                                                       "fused_lora", "compile_layers", "torch_compile",
                                                       "activation_memory_budget")},
        "steps": [{k: v for k, v in r.items() if k not in ("lengths", "keys")} for r in timed],
    }


def run_isolated(pcfg: PerfTrainConfig, spec: str, launcher: str) -> dict:
    """One variant in a child process (or an accelerate launch of several) with a time limit; a crash or OOM
    becomes an error row."""
    from medqwen.perf import variant_config

    row = {"variant": spec, "launcher": launcher, "processes": 1 if launcher == "single" else pcfg.processes}
    variant_config(spec, {})  # a typo fails here, before a process starts
    return row | run_variant(__file__, sys.argv[1:], spec, Path(pcfg.output_dir) / "variants.log",
                             pcfg.variant_timeout_s, launcher, pcfg.processes)


def main(pcfg: PerfTrainConfig) -> list[dict]:
    from medqwen.perf import matmul_peak_tflops, write_perf_report

    if pcfg.tiny:
        pcfg.shape, pcfg.max_seq_len, pcfg.median_len = "tiny", 128, 40
    if pcfg.run_one:
        result = run_one(pcfg, pcfg.run_one)
        if is_main_process():
            print_result(result)
        return []
    out = Path(pcfg.output_dir)
    save_config(pcfg, out / "config.yaml")
    peak = pcfg.peak_tflops or matmul_peak_tflops()
    print(f"bf16 matmul peak: {peak:.0f} TFLOP/s" if peak else "no GPU: MFU not computed", flush=True)
    results = []
    if pcfg.baseline not in pcfg.variants:
        print(f"--baseline {pcfg.baseline!r} is not among --variants: the table compares no rows", flush=True)
    for spec in pcfg.variants:
        for launcher in pcfg.launchers:
            row = run_isolated(pcfg, spec, launcher)
            results.append(row)
            shown = {k: v for k, v in row.items() if k not in ("steps", "lengths")}
            print(f"{spec} on {launcher}: " + json.dumps(shown), flush=True)
            # after every run: a killed benchmark keeps its rows
            md = write_perf_report(results, peak, out, pcfg.seed, pcfg.baseline)
    print(md)
    cpu_notes = sorted({f"{r['variant']}: {', '.join(r['cuda_only_off'])}" for r in results if r.get("cuda_only_off")})
    if cpu_notes:
        print("no CUDA: these variants ran with their CUDA-only parts off (the step's composition does not depend "
              "on them): " + "; ".join(cpu_notes))
    return results


if __name__ == "__main__":
    run_script(PerfTrainConfig, main, echo=lambda pcfg: not pcfg.run_one)  # the variants' processes stay quiet
