"""Training speed: time our trainer's real train step (medqwen.training.build_trainer) for named recipes.

A randomly initialised model of a real shape (speed and memory do not depend on weight values) trains LoRA on
conversations of a realistic length distribution; every variant runs in its own process (an OOM ends only
that variant) and reports real (non-pad) tok/s, computed (padded) tok/s, MFU, peak memory and the ratio to the
original recipe. Recipes: medqwen.perf.VARIANTS; the presets are configs/qwen3-4b/*.yaml.

    # one GPU, Qwen3-4B shape, synthetic lognormal lengths (median 280, capped at 1024)
    python benchmark/perf_train.py --output_dir out/perf
    python benchmark/perf_train.py --variants original,speed,24gb
    python benchmark/perf_train.py --variants "24gb:per_device_train_batch_size=4:recompute_layers=20"
    # real lengths: conversations tokenized with the model's tokenizer and our template
    python benchmark/perf_train.py --data data/lora_medical_merged.jsonl
    # CPU smoke run (CI): tiny model, a few steps
    python benchmark/perf_train.py --tiny --output_dir out/perf-tiny
    # two GPUs: each variant on one GPU, then DDP and FSDP over two (accelerate launch); scaling vs one GPU
    python benchmark/perf_train.py --variants speed,24gb --launchers single,ddp,fsdp --processes 2

Writes results.json, results.md, config.yaml, metrics.json and variants.log (each variant's output) to
--output_dir; prints the table. The tokenizer comes from model/qwen; a machine without the weights needs only
the tokenizer files (vocab.json, merges.txt, tokenizer_config.json, config.json) in model/qwen3-tokenizer.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medqwen.config import PerfTrainConfig
from medqwen.configlib import format_config, parse_config, save_config
from medqwen.distributed import is_main_process, run_launched

MARK = "PERF_RESULT "
GPU_ONLY = ("use_liger_kernel", "compile_layers")  # Triton kernels / inductor: skipped in CPU smoke runs


def run_one(pcfg: PerfTrainConfig, spec: str) -> dict:
    """Build the trainer for one variant around a random model and time it (runs in a child process; under
    accelerate launch in each of its processes, and the main process returns the sums over all of them)."""
    import torch
    from datasets import Dataset

    from medqwen.chat import load_tokenizer
    from medqwen.distributed import gather, parallel_mode, world_size
    from medqwen.perf import (benchmark_conversations, benchmark_model, benchmark_tokenizer_dir, length_summary,
                              lora_train_flops, merge_process_steps, time_trainer, variant_config)
    from medqwen.training import build_trainer, peak_memory_gb

    cuda = torch.cuda.is_available()
    processes = world_size()
    tok_dir = benchmark_tokenizer_dir(pcfg.tokenizer, pcfg.shape)
    tokenizer = load_tokenizer(tok_dir)
    out = tempfile.mkdtemp(prefix="perf-")
    cfg = variant_config(spec, {"model": str(tok_dir), "output_dir": out, "report_to": "none",
                                "max_seq_len": pcfg.max_seq_len, "eval_ratio": 0.0, "logging_steps": 10**6,
                                "eval_steps": 10**6, "seed": pcfg.seed})
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * (3 if cfg.packing else 1)
    # every process builds the same dataset; the Trainer hands each its own share of the batches
    n = pcfg.conversations or int((pcfg.warmup_steps + pcfg.steps + 1) * max(per_step, 64) * 1.3 * processes)
    conversations = benchmark_conversations(tokenizer, n, pcfg.median_len, pcfg.max_seq_len, pcfg.seed, pcfg.data)
    dataset = Dataset.from_list([{"messages": c} for c in conversations])
    model = benchmark_model(pcfg.shape, tokenizer, pcfg.seed)
    trainer = build_trainer(cfg, dataset, None, model=model, tokenizer=tokenizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    timing = time_trainer(trainer, pcfg.warmup_steps, pcfg.steps, sync=torch.cuda.synchronize if cuda else None,
                          profile_step=pcfg.profile)
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
        # the most any one process (GPU) held; every process's own peak in ..._per_process
        "peak_allocated_gib": worst("peak_allocated_gib"),
        "peak_reserved_gib": worst("peak_reserved_gib"),
        "peak_rss_gib": worst("peak_rss_gib"),
        "peak_allocated_gib_per_process": [p["peak_allocated_gib"] for p in per_process],
        "warmup_s": sum(r["seconds"] for r in warmup),
        "wall_s": time.perf_counter() - t0,
        "lengths": length_summary([n for r in timed for n in r["lengths"]]),
        "train_config": {k: getattr(cfg, k) for k in ("packing", "per_device_train_batch_size",
                                                       "gradient_accumulation_steps", "gradient_checkpointing",
                                                       "recompute_layers", "attn_implementation", "use_liger_kernel",
                                                       "fused_lora", "compile_layers", "torch_compile",
                                                       "activation_memory_budget")},
        "steps": [{k: v for k, v in r.items() if k != "lengths"} for r in timed],
    }


def log_output(pcfg: PerfTrainConfig, title: str, stdout: str, stderr: str) -> None:
    """Append a run's output (the end of it) to variants.log."""
    with (Path(pcfg.output_dir) / "variants.log").open("a", encoding="utf-8") as log:
        log.write(f"===== {title}\n{stdout[-20000:]}\n{stderr[-20000:]}\n")


def run_isolated(pcfg: PerfTrainConfig, spec: str, launcher: str) -> dict:
    """One variant in a child process (or an accelerate launch of several) with a time limit; a crash or OOM
    becomes an error row."""
    import torch

    from medqwen.perf import variant_config

    row = {"variant": spec, "launcher": launcher, "processes": 1 if launcher == "single" else pcfg.processes}
    cfg = variant_config(spec, {})
    if not torch.cuda.is_available() and any(getattr(cfg, k) for k in GPU_ONLY):
        return row | {"skipped": "needs CUDA (" + ", ".join(k for k in GPU_ONLY if getattr(cfg, k)) + ")"}
    try:
        proc = run_launched(launcher, pcfg.processes, __file__, [*sys.argv[1:], "--run_one", spec],
                            pcfg.variant_timeout_s)
        stdout, stderr, status = proc.stdout, proc.stderr, f"exit {proc.returncode}"
    except subprocess.TimeoutExpired as timeout:
        stdout, stderr, status = timeout.output or "", timeout.stderr or "", "timed out"
    log_output(pcfg, f"{spec} on {launcher} ({status})", stdout, stderr)
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):  # measured, even if the processes were slow to exit after it
            return row | json.loads(line[len(MARK):])
    if status == "timed out":
        return row | {"error": f"timed out after {pcfg.variant_timeout_s} s"}
    lines = (stderr or stdout).strip().splitlines()
    if any("OutOfMemory" in line or "out of memory" in line for line in lines):
        return row | {"error": "out of memory"}
    # the first failing process's exception, not the launcher's ChildFailedError that follows it
    cause = [line for line in lines if ("Error" in line or "Unsupported" in line) and "ChildFailed" not in line
             and "elastic" not in line][:2]
    return row | {"error": " | ".join(cause or lines[-3:])[-600:]}


def main(pcfg: PerfTrainConfig) -> list[dict]:
    from medqwen.perf import matmul_peak_tflops, write_report

    if pcfg.tiny:
        pcfg.shape, pcfg.max_seq_len, pcfg.median_len = "tiny", 128, 40
    if pcfg.run_one:
        result = run_one(pcfg, pcfg.run_one)
        if is_main_process():
            print(MARK + json.dumps(result), flush=True)
        return []
    out = Path(pcfg.output_dir)
    save_config(pcfg, out / "config.yaml")
    print("perf_train config:\n" + format_config(pcfg), flush=True)
    peak = pcfg.peak_tflops or matmul_peak_tflops()
    print(f"bf16 matmul peak: {peak:.0f} TFLOP/s" if peak else "no GPU: MFU not computed", flush=True)
    results = []
    for spec in pcfg.variants:
        for launcher in pcfg.launchers:
            row = run_isolated(pcfg, spec, launcher)
            results.append(row)
            print(f"{spec} on {launcher}: " + json.dumps({k: v for k, v in row.items() if k not in ("steps", "lengths")}),
                  flush=True)
            md = write_report(results, peak, out, pcfg.seed)  # after every run: a killed benchmark keeps its rows
    print(md)
    return results


if __name__ == "__main__":
    main(parse_config(PerfTrainConfig))
