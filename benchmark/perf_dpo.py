"""Preference-training speed: time our DPO step (medqwen.train.dpo.build_dpo_trainer) for named recipes.

A randomly initialised model of a real shape trains LoRA with DPO on pairs whose prompt + chosen and rejected
replies follow the real medical length distribution (benchmark/data/medical_lengths.json); each recipe runs in its
own process (an OOM ends only that one) and reports real (non-pad) tok/s over chosen and rejected sequences,
padded tok/s, MFU (policy forward/backward + reference forward, useful tokens only) and peak memory.

    # one GPU, Qwen3-4B shape: TRL's defaults, then our fused LoRA, no recompute, compiled layers, and 24 GB
    python benchmark/perf_dpo.py --output_dir out/perf-dpo
    # CPU smoke run: tiny model
    python benchmark/perf_dpo.py --shape tiny --steps 2 --warmup_steps 1
"""

import json
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import save_config
from medqwen.perf.dpo import DPO_VARIANTS, MEMORY_CAPS_GIB, PerfDpoConfig, benchmark_pairs, dpo_step_flops
from medqwen.perf.isolate import print_result, run_variant
from medqwen.reporting import markdown_table


def run_one(pcfg: PerfDpoConfig, name: str) -> dict:
    """Build the DPO trainer for one recipe around a random model and time it (in a child process)."""
    import torch
    from datasets import Dataset

    from medqwen.chat import load_tokenizer
    from medqwen.perf import benchmark_model, benchmark_tokenizer_dir, time_trainer
    from medqwen.train.common import peak_memory_gb
    from medqwen.train.dpo import build_dpo_trainer
    from medqwen.train.dpo_config import DpoConfig

    cuda = torch.cuda.is_available()
    if cuda and name in MEMORY_CAPS_GIB:  # before anything is allocated: the cap holds for the whole run
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, MEMORY_CAPS_GIB[name] * 2**30 / total))
    tok_dir = benchmark_tokenizer_dir(pcfg.tokenizer, pcfg.shape)
    tokenizer = load_tokenizer(tok_dir)
    cfg = DpoConfig(model=str(tok_dir), output_dir=tempfile.mkdtemp(prefix="perf-dpo-"), report_to="none",
                    loss=pcfg.loss, max_seq_len=pcfg.max_seq_len, eval_ratio=0.0, logging_steps=10**6,
                    eval_steps=10**6, per_device_train_batch_size=pcfg.pairs_per_step, gradient_accumulation_steps=1,
                    warmup_steps=0.0, seed=pcfg.seed)
    cfg = replace(cfg, **DPO_VARIANTS[name])
    model = benchmark_model(pcfg.shape, tokenizer, pcfg.seed)
    n_pairs = (pcfg.warmup_steps + pcfg.steps + 1) * pcfg.pairs_per_step
    pairs = benchmark_pairs(n_pairs, pcfg.max_seq_len, min(tokenizer.vocab_size, model.config.vocab_size), pcfg.seed)
    trainer = build_dpo_trainer(cfg, Dataset.from_list(pairs), model=model, tokenizer=tokenizer)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    timing = time_trainer(trainer, pcfg.warmup_steps, pcfg.steps, cuda=cuda, profile_step=pcfg.profile)
    if "profile" in timing:
        (Path(pcfg.output_dir) / f"profile_{name}.txt").write_text(timing["profile"], encoding="utf-8")
    timed = timing["timed"]
    seconds = sum(r["seconds"] for r in timed)
    real, computed = sum(r["real_tokens"] for r in timed), sum(r["computed_tokens"] for r in timed)
    flops = sum(dpo_step_flops(model.config, r["lengths"], cfg.lora_r, cfg.lora_target_modules,
                               reference=cfg.loss != "orpo") for r in timed)
    return {"variant": name, "real_tok_s": real / seconds, "computed_tok_s": computed / seconds,
            "padding_fraction": 1 - real / computed, "tflops": flops / seconds / 1e12,
            "step_s": sorted(r["seconds"] for r in timed)[len(timed) // 2],
            "sequences_per_step": sum(r["sequences"] for r in timed) / len(timed),
            "tokens_per_step": real / len(timed), "peak_allocated_gib": peak_memory_gb(),
            "memory_cap_gib": MEMORY_CAPS_GIB.get(name), "kernels": sorted(trainer.fast_path_applied),
            "losses": [r["loss"] for r in timing["warmup"] + timed]}


def main(pcfg: PerfDpoConfig) -> list[dict]:
    if pcfg.run_one:
        print_result(run_one(pcfg, pcfg.run_one))
        return []
    from medqwen.perf import matmul_peak_tflops

    out = Path(pcfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(pcfg, out / "config.yaml")
    peak = pcfg.peak_tflops or matmul_peak_tflops()
    rows = []
    for name in pcfg.variants:
        row = run_variant(__file__, sys.argv[1:], name, out / "variants.log", pcfg.variant_timeout_s)
        row.setdefault("variant", name)
        if peak and "tflops" in row:
            row["mfu"] = row["tflops"] / peak
        rows.append(row)
        print(json.dumps(row), flush=True)
    base = next((r for r in rows if r["variant"] == "trl" and "real_tok_s" in r), None)
    table = [[r["variant"], *(["error: " + r["error"]] + [""] * 6 if "error" in r else
                              [f"{r['real_tok_s']:,.0f}", f"{r['step_s']:.2f}", f"{r.get('mfu', 0):.1%}",
                               f"{r['padding_fraction']:.0%}", f"{r['peak_allocated_gib']:.1f}",
                               f"{r['real_tok_s'] / base['real_tok_s']:.2f}x" if base else ""])] for r in rows]
    text = markdown_table(table, ["variant", "real tok/s", "step s", "MFU", "padding", "peak GiB", "vs trl"])
    (out / "results.json").write_text(json.dumps({"peak_tflops": peak, "rows": rows}, indent=2))
    (out / "results.md").write_text(text + "\n")
    print(f"bf16 matmul peak: {peak} TFLOP/s\n{text}")
    return rows


if __name__ == "__main__":
    run_script(PerfDpoConfig, main, echo=lambda pcfg: not pcfg.run_one)  # the variants' processes stay quiet
