"""Data-parallel correctness: N optimizer steps on several processes (DDP or FSDP) give the losses and the LoRA
update of one process that takes the same global batch.

Both runs train the same random model (same seed) on the same conversations with our trainer
(medqwen.train.sft.build_trainer). The single process accumulates `gradient_accumulation_steps x processes`
micro-batches per step; each of the P processes accumulates `gradient_accumulation_steps`, and the Trainer deals
them the same micro-batches between them. LoRA dropout is 0 in both (its masks depend on the process count).
Compared: the loss logged at every step (the mean over the global batch) and the adapter's update after the last
step, ||update_P - update_1|| / ||update_1|| over all LoRA matrices. The single run also runs a second time: on a
GPU, kernels that sum in a varying order (FlashAttention's backward, say) make two identical runs differ, and
Adam, which moves each weight by about lr x sign(gradient) early on, turns those differences in near-zero
gradients into whole steps. That repeat is the noise floor the parallel run's update is held to.

    # two GPUs, Qwen3-4B shape, the speed recipe, DDP then FSDP
    python benchmark/check_data_parallel.py --launcher ddp --processes 2
    python benchmark/check_data_parallel.py --launcher fsdp --processes 2
    # CPU (gloo processes), tiny model: what the test suite runs
    python benchmark/check_data_parallel.py --tiny --launcher ddp

Writes config.yaml, results.md, metrics.json and each run's log (single.log, parallel.log) to --output_dir;
exits 1 when a difference is above the tolerance.
"""

import sys
from pathlib import Path

from medqwen.cli import run_script
from medqwen.configlib import save_config
from medqwen.distributed import is_main_process, is_sharded, parallel_mode, run_launched
from medqwen.perf.config import DataParallelCheckConfig


def lora_weights(model) -> dict:
    """Every LoRA matrix of `model` as a full fp32 CPU tensor (FSDP shards are gathered: call on every process)."""
    import torch

    weights = {}
    for name, param in model.named_parameters():
        if "lora_" in name:
            full = param.full_tensor() if is_sharded(param) else param
            weights[name.removeprefix("module.")] = full.detach().to("cpu", torch.float32, copy=True)
    return weights


def run_role(ccfg: DataParallelCheckConfig, role: str) -> None:
    """Train one side (in each of its processes); the main process saves its losses and LoRA weights."""
    import torch
    from datasets import Dataset

    from medqwen.chat import load_tokenizer
    from medqwen.perf import benchmark_conversations, benchmark_model, benchmark_tokenizer_dir, variant_config
    from medqwen.train.sft import build_trainer

    tok_dir = benchmark_tokenizer_dir(ccfg.tokenizer, ccfg.shape)
    tokenizer = load_tokenizer(tok_dir)
    accumulation = ccfg.gradient_accumulation_steps * (1 if role == "parallel" else ccfg.processes)
    out = Path(ccfg.output_dir) / role
    # overrides after the recipe's own settings, so they win over a preset's accumulation and dropout
    spec = (f"{ccfg.variant}:gradient_accumulation_steps={accumulation}:lora_dropout=0:"
            f"learning_rate={ccfg.learning_rate}:max_steps={ccfg.steps}:warmup_steps=0")
    cfg = variant_config(spec, {"model": str(tok_dir), "output_dir": str(out), "report_to": "none",
                                "max_seq_len": ccfg.max_seq_len, "eval_ratio": 0.0, "logging_steps": 1,
                                "eval_steps": 10**6, "seed": ccfg.seed})
    rows_per_step = cfg.per_device_train_batch_size * ccfg.gradient_accumulation_steps * ccfg.processes
    # enough conversations that no run reaches the end of an epoch (a ragged last batch is dealt differently)
    n = int((ccfg.steps + 1) * rows_per_step * (3 if cfg.packing else 1) * 1.5) + 16
    conversations = benchmark_conversations(tokenizer, n, ccfg.median_len, ccfg.max_seq_len, ccfg.seed)
    dataset = Dataset.from_list([{"messages": c} for c in conversations])
    trainer = build_trainer(cfg, dataset, None, model=benchmark_model(ccfg.shape, tokenizer, ccfg.seed),
                            tokenizer=tokenizer)
    initial = lora_weights(trainer.model)
    trainer.train()
    final = lora_weights(trainer.model)
    if is_main_process():
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        torch.save({"losses": losses, "initial": initial, "final": final, **parallel_mode(trainer)},
                   out / "result.pt")


def compare(single: dict, parallel: dict) -> dict:
    """Per-step loss differences and the relative difference of the LoRA updates."""
    import torch

    if single["initial"].keys() != parallel["initial"].keys():
        raise RuntimeError("the two runs have different LoRA matrices")
    start_gap = max((single["initial"][k] - parallel["initial"][k]).abs().max().item() for k in single["initial"])
    update_1 = torch.cat([(single["final"][k] - single["initial"][k]).flatten() for k in single["initial"]])
    update_p = torch.cat([(parallel["final"][k] - parallel["initial"][k]).flatten() for k in single["initial"]])
    steps = [{"step": i + 1, "loss_single": a, "loss_parallel": b, "relative_difference": abs(a - b) / abs(a)}
             for i, (a, b) in enumerate(zip(single["losses"], parallel["losses"]))]
    return {"steps": steps, "initial_max_abs_difference": start_gap,
            "parallel_mode": (parallel["distributed_type"]
                              + (", weights sharded" if parallel["weights_sharded"] else "")),
            "update_norm": update_1.norm().item(),
            "update_relative_difference": ((update_p - update_1).norm() / update_1.norm()).item(),
            "loss_change": (single["losses"][-1] - single["losses"][0]) / single["losses"][0],
            "max_loss_relative_difference": max(s["relative_difference"] for s in steps)}


def main(ccfg: DataParallelCheckConfig) -> int:
    import torch

    from medqwen.reporting import markdown_table, write_metrics

    if ccfg.tiny:
        ccfg.shape, ccfg.max_seq_len, ccfg.median_len = "tiny", 128, 40
        ccfg.variant = "packed" if ccfg.variant == "speed" else ccfg.variant  # speed needs CUDA kernels
    if ccfg.run_role:
        run_role(ccfg, ccfg.run_role)
        return 0
    gpu = torch.cuda.is_available()
    tolerance = ccfg.tolerance or (1e-2 if gpu else 1e-4)
    out = Path(ccfg.output_dir)
    save_config(ccfg, out / "config.yaml", extra={"tolerance_used": tolerance})
    results = {}
    for role, launcher in (("single", "single"), ("repeat", "single"), ("parallel", ccfg.launcher)):
        print(f"{role} run ({launcher}) ...", flush=True)
        proc = run_launched(launcher, ccfg.processes, __file__, [*sys.argv[1:], "--run_role", role], ccfg.timeout_s)
        log = out / f"{role}.log"
        log.write_text(proc.stdout + "\n" + proc.stderr, encoding="utf-8")
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            raise SystemExit(f"the {role} run failed (exit {proc.returncode}); full output in {log}:\n{tail}")
        results[role] = torch.load(out / role / "result.pt")
    report = compare(results["single"], results["parallel"])
    noise = compare(results["single"], results["repeat"])
    report["repeat_update_relative_difference"] = noise["update_relative_difference"]
    report["repeat_max_loss_relative_difference"] = noise["max_loss_relative_difference"]
    update_bound = max(tolerance, 2 * noise["update_relative_difference"])
    passed = (report["max_loss_relative_difference"] <= tolerance
              and report["update_relative_difference"] <= update_bound)
    rows = [[s["step"], f"{s['loss_single']:.6f}", f"{s['loss_parallel']:.6f}", f"{s['relative_difference']:.2e}"]
            for s in report["steps"]]
    md = markdown_table(rows, ["step", "loss, 1 process", f"loss, {ccfg.processes} processes ({ccfg.launcher})",
                               "relative difference"])
    md += (f"\n\nLoRA update after {ccfg.steps} steps: relative difference {report['update_relative_difference']:.2e} "
           f"(update norm {report['update_norm']:.3e}; initial weights differ by at most "
           f"{report['initial_max_abs_difference']:.1e}; parallel run: {report['parallel_mode']}). The single run "
           f"repeated: update difference {noise['update_relative_difference']:.2e}, losses up to "
           f"{noise['max_loss_relative_difference']:.2e} apart. The loss moved {100 * report['loss_change']:+.1f}% "
           f"over the run. Pass: losses within {tolerance:g}, update within {update_bound:.2e} "
           f"(the larger of {tolerance:g} and twice the repeat's): {'PASS' if passed else 'FAIL'}.")
    if ccfg.launcher == "fsdp" and not results["parallel"]["weights_sharded"]:
        md += ("\n\nNote: FSDP did not shard the weights here (accelerate runs the FSDP config as plain data "
               "parallel without GPUs), so this checked DDP-style data parallelism, not FSDP.")
    (out / "results.md").write_text(md + "\n", encoding="utf-8")
    write_metrics(out, {"passed": passed, "tolerance": tolerance, "update_bound": update_bound,
                        "launcher": ccfg.launcher,
                        "processes": ccfg.processes,
                        **{k: v for k, v in report.items() if k != "steps"}}, detail=report["steps"], seed=ccfg.seed)
    print(md)
    return 0 if passed else 1


if __name__ == "__main__":
    run_script(DataParallelCheckConfig, main, echo=lambda ccfg: not ccfg.run_role)  # the runs it launches stay quiet
