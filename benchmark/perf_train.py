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

from medqwen.config import PerfTrainConfig, REPO_ROOT, format_config, parse_config, save_config

MARK = "PERF_RESULT "
GPU_ONLY = ("use_liger_kernel", "compile_layers")  # Triton kernels / inductor: skipped in CPU smoke runs


def tokenizer_dir(pcfg: PerfTrainConfig) -> Path:
    if pcfg.tokenizer:
        return Path(pcfg.tokenizer)
    if pcfg.shape == "tiny":
        return REPO_ROOT / "model/smollm2-135m-instruct"
    return next((p for p in (REPO_ROOT / "model/qwen", REPO_ROOT / "model/qwen3-tokenizer") if p.is_dir()),
                REPO_ROOT / "model/qwen")


def run_one(pcfg: PerfTrainConfig, spec: str) -> dict:
    """Build the trainer for one variant around a random model and time it (runs in a child process)."""
    import torch
    from datasets import Dataset

    from medqwen.chat import load_tokenizer
    from medqwen.modeling import random_qwen3
    from medqwen.perf import (length_summary, lora_train_flops, synthetic_conversations, synthetic_lengths,
                              time_trainer, variant_config)
    from medqwen.training import build_trainer, peak_memory_gb, read_conversations

    cuda = torch.cuda.is_available()
    tok_dir = tokenizer_dir(pcfg)
    tokenizer = load_tokenizer(tok_dir)
    out = tempfile.mkdtemp(prefix="perf-")
    cfg = variant_config(spec, {"model_name_or_path": str(tok_dir), "output_dir": out, "report_to": "none",
                                "max_seq_len": pcfg.max_seq_len, "eval_ratio": 0.0, "logging_steps": 10**6,
                                "eval_steps": 10**6, "seed": pcfg.seed})
    per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * (3 if cfg.packing else 1)
    n = pcfg.conversations or int((pcfg.warmup_steps + pcfg.steps + 1) * max(per_step, 64) * 1.3)
    if pcfg.data:
        conversations = [c["conversations"] for c in read_conversations(pcfg.data)]  # the trainer's reader
        conversations = (conversations * (n // len(conversations) + 1))[:n]
    else:
        probe = [{"role": "user", "content": " the"}, {"role": "assistant", "content": " the"}]
        overhead = len(tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True)["input_ids"]) - 2
        lengths = synthetic_lengths(n, median=pcfg.median_len, cap=pcfg.max_seq_len, seed=pcfg.seed)
        conversations = synthetic_conversations(tokenizer, lengths, overhead, seed=pcfg.seed)
    dataset = Dataset.from_list([{"messages": c} for c in conversations])

    dtype = torch.bfloat16 if cuda else torch.float32
    torch.set_default_dtype(dtype)
    with torch.device("cuda" if cuda else "cpu"):  # initialise on the GPU: a 4B model on CPU takes minutes
        model = random_qwen3(pcfg.shape, vocab_size=max(len(tokenizer), 256) if pcfg.shape == "tiny" else None,
                             seed=pcfg.seed, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                             pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    torch.set_default_dtype(torch.float32)
    trainer = build_trainer(cfg, dataset, None, model=model, tokenizer=tokenizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    timing = time_trainer(trainer, pcfg.warmup_steps, pcfg.steps, sync=torch.cuda.synchronize if cuda else None,
                          profile_step=pcfg.profile)
    if "profile" in timing:
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec)
        (Path(pcfg.output_dir) / f"profile_{name}.txt").write_text(timing["profile"], encoding="utf-8")
    timed = timing["timed"]
    seconds = sum(r["seconds"] for r in timed)
    real, computed = sum(r["real_tokens"] for r in timed), sum(r["computed_tokens"] for r in timed)
    flops = sum(lora_train_flops(model.config, r["lengths"], cfg.lora_r, cfg.lora_target_modules) for r in timed)
    return {
        "variant": spec,
        "real_tok_s": real / seconds,
        # steady state: one slow step (a recompile for a new shape, say; rare over a long run) does not move it
        "median_step_tok_s": sorted(r["real_tokens"] / r["seconds"] for r in timed)[len(timed) // 2],
        "computed_tok_s": computed / seconds,
        "padding_fraction": 1 - real / computed,
        "tflops": flops / seconds / 1e12,
        "step_s": sorted(r["seconds"] for r in timed)[len(timed) // 2],
        "conversations_per_step": sum(r["sequences"] for r in timed) / len(timed),
        "peak_allocated_gib": peak_memory_gb() if cuda else None,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "peak_rss_gib": None if cuda else peak_memory_gb(),
        "warmup_s": sum(r["seconds"] for r in timing["warmup"]),
        "wall_s": time.perf_counter() - t0,
        "lengths": length_summary([n for r in timed for n in r["lengths"]]),
        "train_config": {k: getattr(cfg, k) for k in ("packing", "per_device_train_batch_size",
                                                       "gradient_accumulation_steps", "gradient_checkpointing",
                                                       "recompute_layers", "attn_implementation", "use_liger_kernel",
                                                       "fused_lora", "compile_layers", "torch_compile",
                                                       "activation_memory_budget")},
        "steps": [{k: v for k, v in r.items() if k != "lengths"} for r in timed],
    }


def run_isolated(pcfg: PerfTrainConfig, spec: str) -> dict:
    """One variant in a child process with a time limit; a crash or OOM becomes an error row."""
    import torch

    from medqwen.perf import variant_config

    cfg = variant_config(spec, {})
    if not torch.cuda.is_available() and any(getattr(cfg, k) for k in GPU_ONLY):
        return {"variant": spec, "skipped": "needs CUDA (" + ", ".join(k for k in GPU_ONLY if getattr(cfg, k)) + ")"}
    argv = [sys.executable, __file__, *sys.argv[1:], "--run_one", spec]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=pcfg.variant_timeout_s)
    except subprocess.TimeoutExpired:
        return {"variant": spec, "error": f"timed out after {pcfg.variant_timeout_s} s"}
    with (Path(pcfg.output_dir) / "variants.log").open("a", encoding="utf-8") as log:
        log.write(f"===== {spec} (exit {proc.returncode})\n{proc.stdout[-20000:]}\n{proc.stderr[-20000:]}\n")
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    if any("OutOfMemory" in line or "out of memory" in line for line in lines[-30:]):
        return {"variant": spec, "error": "out of memory"}
    cause = [line for line in lines if "Error" in line or "Unsupported" in line][-2:]
    return {"variant": spec, "error": " | ".join(cause or lines[-3:])[-600:]}


def main(pcfg: PerfTrainConfig) -> list[dict]:
    from medqwen.perf import matmul_peak_tflops, write_report

    if pcfg.tiny:
        pcfg.shape, pcfg.max_seq_len, pcfg.median_len = "tiny", 128, 40
    if pcfg.run_one:
        print(MARK + json.dumps(run_one(pcfg, pcfg.run_one)), flush=True)
        return []
    out = Path(pcfg.output_dir)
    save_config(pcfg, out / "config.yaml")
    print("perf_train config:\n" + format_config(pcfg), flush=True)
    peak = pcfg.peak_tflops or matmul_peak_tflops()
    print(f"bf16 matmul peak: {peak:.0f} TFLOP/s" if peak else "no GPU: MFU not computed", flush=True)
    results = []
    for spec in pcfg.variants:
        row = run_isolated(pcfg, spec)
        results.append(row)
        print(f"{spec}: " + json.dumps({k: v for k, v in row.items() if k not in ("steps", "lengths")}), flush=True)
        md = write_report(results, peak, out, pcfg.seed)  # after every variant: a killed run keeps its rows
    print(md)
    return results


if __name__ == "__main__":
    main(parse_config(PerfTrainConfig))
