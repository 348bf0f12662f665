"""benchmark/perf_train.py and medqwen.perf: FLOP formula, length distributions, token counting, CPU smoke run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from medqwen.perf import (
    StepCounter,
    lora_train_flops,
    projection_shapes,
    synthetic_conversations,
    synthetic_lengths,
    variant_config,
)
from tests.conftest import REPO

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_flop_formula_counts_the_real_qwen3_4b_parameters():
    """The parameters the formula multiplies are the model's own (built on the meta device, no memory)."""
    from peft import LoraConfig, get_peft_model

    from medqwen.modeling import random_qwen3

    with torch.device("meta"):
        model = random_qwen3("qwen3-4b")
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    # tied embeddings: the LM head is the embedding matrix, counted once as a matmul
    shapes = projection_shapes(model.config)
    assert linear == sum(i * o for i, o in shapes.values()) * 36 + model.config.vocab_size * 2560
    with torch.device("meta"):
        lora = get_peft_model(model, LoraConfig(r=8, target_modules=TARGETS)).get_nb_trainable_parameters()[0]
    # one token, no attention context to speak of: 4 FLOPs per frozen weight, 6 per LoRA weight (+ attention)
    flops = lora_train_flops(model.config, [1], lora_r=8, targets=TARGETS)
    attention = 3 * 4 * 4096 * 1 * 36
    assert flops == 4 * linear + 6 * lora + attention
    assert 16.0e9 < flops < 16.2e9  # ~4 x 4.0B parameters
    # attention grows with the square of the length; a 1024-token sequence costs more per token than 1 token
    assert lora_train_flops(model.config, [1024], 8, TARGETS) / 1024 > flops * 1.05


def test_synthetic_lengths_follow_the_lognormal_and_cap():
    lengths = synthetic_lengths(4000, median=280, cap=1024, seed=0)
    assert lengths == synthetic_lengths(4000, median=280, cap=1024, seed=0)
    assert max(lengths) == 1024 and min(lengths) >= 32
    assert 260 < sorted(lengths)[2000] < 300


def test_synthetic_conversations_render_to_the_requested_length(bundled_model_dir):
    from medqwen.chat import load_tokenizer

    tokenizer = load_tokenizer(bundled_model_dir)
    probe = [{"role": "user", "content": " the"}, {"role": "assistant", "content": " the"}]
    overhead = len(tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True)["input_ids"]) - 2
    targets = [40, 100, 333]
    for target, conv in zip(targets, synthetic_conversations(tokenizer, targets, overhead, seed=1)):
        n = len(tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
        assert abs(n - target) <= 2, (n, target)


def test_step_counter_counts_real_and_padded_tokens_and_conversations():
    padded = {"input_ids": torch.arange(20).view(2, 10), "attention_mask": torch.tensor([[1] * 10, [1] * 4 + [0] * 6])}
    free = {"input_ids": torch.cat([torch.arange(10), torch.arange(10, 14)])[None],
            "cu_seq_lens_q": torch.tensor([0, 10, 14])}
    counters = []
    for batch, real, computed in ((padded, 14, 20), (free, 14, 14)):
        counter = StepCounter()
        counter.count(batch)
        assert (counter.real, counter.computed, counter.sequences, counter.lengths) == (real, computed, 2, [10, 4])
        counters.append(counter)
    assert counters[0].keys == counters[1].keys  # the same conversations, padded or padding-free
    assert counters[0].keys[0] != counters[0].keys[1]


def test_real_length_histogram_is_in_the_repository():
    """perf_train --lengths real needs no data beyond the repository: lengths drawn from the stored histogram."""
    from medqwen.perf.data import histogram_lengths, load_length_histogram

    histogram = load_length_histogram()
    assert histogram["conversations"] == sum(histogram["length_counts"].values()) > 1000
    assert 0.5 < histogram["assistant_fraction"] < 1 and "medical_dialogue" in histogram["how"]
    drawn = histogram_lengths(4000, histogram, cap=1024, seed=0)
    assert drawn == histogram_lengths(4000, histogram, cap=1024, seed=0) and max(drawn) <= 1024
    ordered = sorted(int(k) for k, c in histogram["length_counts"].items() for _ in range(c))
    real_median = ordered[len(ordered) // 2]
    assert abs(sorted(drawn)[2000] - real_median) <= 0.15 * real_median


def test_variant_specs_resolve_presets_and_overrides():
    gpu = {"cuda": True, "varlen": True, "triton": True, "gpu_gib": 139.8}
    speed = variant_config("speed", {}, gpu)
    assert speed.padding_free and not speed.packing and speed.fused_lora and speed.attn_implementation == "varlen"
    assert (speed.per_device_train_batch_size, speed.gradient_accumulation_steps) == (64, 1)  # the original's 64
    assert speed.compile_layers and speed.max_tokens_per_forward > 0
    small = variant_config("24gb:max_tokens_per_forward=2048:gradient_checkpointing=true:recompute_layers=30",
                           {"output_dir": "x"}, gpu)
    assert (small.max_tokens_per_forward, small.recompute_layers, small.gradient_checkpointing,
            small.activation_memory_budget, small.per_device_train_batch_size) == (2048, 30, True, 0.3, 64)
    share = variant_config("2x24gb-share", {}, gpu)  # one of two processes: 32 conversations of the 64
    assert (share.per_device_train_batch_size, share.gradient_accumulation_steps, share.fast_path) == (32, 1, "24gb")
    original = variant_config("original", {}, gpu)
    assert (original.packing, original.padding_free, original.per_device_train_batch_size,
            original.gradient_accumulation_steps, original.gradient_checkpointing, original.fused_lora,
            original.fast_path) == (False, False, 8, 8, True, False, "off")
    cpu = variant_config("speed", {}, {"cuda": False, "varlen": False, "triton": False})
    assert cpu.padding_free and cpu.per_device_train_batch_size == 64 and not cpu.compile_layers
    with pytest.raises(ValueError, match="unknown variant"):
        variant_config("warp-speed", {})


@pytest.mark.slow
def test_perf_train_tiny_smoke(tmp_path, bundled_model_dir):
    """The CPU smoke run through the real trainer: the fast presets run with their CUDA-only parts off and train
    the original's optimizer steps; a packed variant's steps are flagged as a different recipe."""
    out = tmp_path / "perf"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(REPO / "benchmark/perf_train.py"), "--tiny", "--output_dir", str(out),
           "--variants", "original,speed,24gb:max_tokens_per_forward=200,packed", "--warmup_steps", "0",
           "--steps", "2", "--conversations", "64", "--lengths", "real"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {r["variant"].split(":")[0]: r for r in json.loads((out / "results.json").read_text())["results"]}
    original, speed, small, packed = (results[k] for k in ("original", "speed", "24gb", "packed"))
    assert original["real_tok_s"] > 0 and 0 < original["padding_fraction"] < 1
    assert original["conversations_per_step_each"] == [8, 8]  # --tiny: 4 x 2
    for fast in (speed, small):
        assert fast["padding_fraction"] == 0 and fast["train_config"]["fused_lora"]
        assert fast["step_fingerprints"] == original["step_fingerprints"]
        assert fast["tokens_per_step"] == original["tokens_per_step"]
        # the untrained model's loss on the same first step: the same function computed
        assert fast["step_losses"][0] == pytest.approx(original["step_losses"][0], rel=1e-4)
    assert speed["cuda_only_off"] == ["compile_layers"]
    assert packed["step_fingerprints"] != original["step_fingerprints"]
    table = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert "| yes |" in table["speed"] and "| yes |" in table["24gb:max_tokens_per_forward=200"]
    assert "DIFFERENT" not in table["speed"] + table["24gb:max_tokens_per_forward=200"]
    assert "DIFFERENT" in table["packed"]
    assert "CUDA-only parts off" in proc.stdout
    for name in ("config.yaml", "metrics.json", "results.md"):
        assert (out / name).is_file()


def test_steps_of_several_processes_merge_into_one():
    from medqwen.perf import merge_process_steps

    rank0 = [{"seconds": 1.0, "real_tokens": 10, "computed_tokens": 12, "sequences": 2, "lengths": [4, 6],
              "loss": 2.0}]
    rank1 = [{"seconds": 1.5, "real_tokens": 7, "computed_tokens": 7, "sequences": 1, "lengths": [7], "loss": 3.0}]
    assert merge_process_steps([rank0, rank1]) == [
        {"seconds": 1.5, "real_tokens": 17, "computed_tokens": 19, "sequences": 3, "loss": 2.5,
         "lengths": [4, 6, 7], "keys": []}]


def test_report_of_launched_rows_has_scaling_and_flags_unsharded_fsdp(tmp_path):
    from medqwen.perf import write_perf_report

    def row(launcher, processes, tok_s, **extra):
        return {"variant": "24gb", "launcher": launcher, "processes": processes, "real_tok_s": tok_s,
                "median_step_tok_s": tok_s, "computed_tok_s": tok_s, "padding_fraction": 0.0,
                "tflops": 100.0 * processes, "peak_allocated_gib": 20.0, "peak_reserved_gib": 21.0,
                "peak_rss_gib": None, "conversations_per_step": 64.0 * processes, **extra}

    results = [row("single", 1, 1000.0), row("ddp", 2, 1900.0),
               row("fsdp", 2, 1800.0, weights_sharded=False, distributed_type="MULTI_CPU"),
               {"variant": "speed", "launcher": "fsdp", "processes": 2, "error": "out of memory"}]
    md = write_perf_report(results, 400.0, tmp_path)
    lines = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in md.splitlines()[2:6]}
    assert lines["ddp x2"][2:4] == ["1900", "950"] and lines["ddp x2"][-1] == "1.90x"
    assert lines["ddp x2"][7] == "25.0%"  # MFU against two GPUs' peak
    assert "fsdp x2 (unsharded: ran as MULTI_CPU)" in lines and lines["single"][-1] == ""
    assert "out of memory" in md
    assert json.loads((tmp_path / "metrics.json").read_text())["summary"]["24gb on ddp"]["processes"] == 2


def test_loss_column_flags_a_different_function():
    """Same steps, first-step loss off by more than 1e-3 relative: the variant computes something else."""
    from medqwen.perf.report import loss_path

    original = {"step_fingerprints": ["a", "b"], "step_losses": [12.4439, 11.0]}
    assert loss_path({"step_fingerprints": ["a", "b"], "step_losses": [12.4435, 10.9]}, original) == \
        "12.4435 → 10.9000"
    assert loss_path({"step_fingerprints": ["a", "b"], "step_losses": [12.5, 10.9]}, original).endswith("DIFFERENT")
    # another recipe's first step holds other conversations: its loss is not compared
    assert "DIFFERENT" not in loss_path({"step_fingerprints": ["c", "d"], "step_losses": [12.5, 10.9]}, original)
    assert loss_path({"step_fingerprints": ["a", "b"]}, original) == ""


def test_report_compares_with_the_named_baseline(tmp_path):
    """--baseline names the row the others are compared with, overrides included."""
    from medqwen.perf import write_perf_report

    def row(variant, tok_s, fingerprints):
        return {"variant": variant, "launcher": "single", "processes": 1, "real_tok_s": tok_s,
                "median_step_tok_s": tok_s, "computed_tok_s": tok_s, "padding_fraction": 0.0, "tflops": 1.0,
                "peak_allocated_gib": None, "peak_reserved_gib": None, "peak_rss_gib": 2.0,
                "conversations_per_step": 64.0, "step_fingerprints": fingerprints, "step_losses": [10.8, 10.7]}

    baseline = "original:per_device_train_batch_size=8:gradient_accumulation_steps=8"
    results = [row(baseline, 100.0, ["a", "b"]), row("speed", 250.0, ["a", "b"]), row("packed", 300.0, ["c"])]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in write_perf_report(results, None, tmp_path, baseline=baseline).splitlines()[2:5]}
    assert rows["speed"][11:14] == ["yes", "10.8000 → 10.7000", "2.50x"]
    assert rows["packed"][11].startswith("DIFFERENT")
    assert write_perf_report(results, None, tmp_path).splitlines()[3].split("|")[12].strip() == "n/a"  # no "original"


@pytest.mark.slow
def test_perf_train_on_two_processes(tmp_path, bundled_model_dir):
    """DDP over gloo: the main process reports both processes' tokens, and the scaling over one process."""
    out = tmp_path / "perf"
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, str(REPO / "benchmark/perf_train.py"), "--tiny", "--output_dir", str(out),
           "--variants", "packed:per_device_train_batch_size=8:gradient_accumulation_steps=1",
           "--launchers", "single,ddp", "--warmup_steps", "0", "--steps", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--baseline 'original' is not among --variants" in proc.stdout  # said, not a silent table of n/a
    single, ddp = json.loads((out / "results.json").read_text())["results"]
    assert (single["processes"], ddp["processes"], ddp["distributed_type"]) == (1, 2, "MULTI_CPU")
    assert len(ddp["peak_allocated_gib_per_process"]) == 2
    # each process takes its own micro-batches: twice the rows (8 each), so about twice the conversations
    assert 1.5 < ddp["conversations_per_step"] / single["conversations_per_step"] < 2.5
    assert sum(s["real_tokens"] for s in ddp["steps"]) == ddp["lengths"]["total"]
    assert "| ddp x2 |" in proc.stdout


def test_profiled_step_ends_before_the_final_checkpoint(tiny_model_dir, tmp_path):
    """The profile covers the one extra step only: the end-of-training save (weights and optimizer state copied
    to the host) once showed up in it as thousands of device-to-host copies a step does not make."""
    from datasets import Dataset

    from medqwen.perf import time_trainer
    from medqwen.train.config import TrainConfig
    from medqwen.train.sft import build_trainer
    from tests.test_fast_path import conversations

    cfg = TrainConfig(model=str(tiny_model_dir), output_dir=str(tmp_path), per_device_train_batch_size=2,
                      gradient_accumulation_steps=1, max_seq_len=64, report_to="none", eval_ratio=0.0,
                      logging_steps=100, eval_steps=100, seed=0)
    trainer = build_trainer(cfg, Dataset.from_list([{"messages": c} for c in conversations(8)]))
    profiling_during_save = []
    save = trainer._save_checkpoint

    def spy(*args, **kwargs):
        profiling_during_save.append(torch.autograd.profiler._is_profiler_enabled)
        return save(*args, **kwargs)

    trainer._save_checkpoint = spy
    result = time_trainer(trainer, warmup_steps=1, steps=1, profile_step=True)
    assert result["profile"].startswith("profiled step:") and len(result["timed"]) == 1
    assert profiling_during_save == [False]  # the trainer saved once, at the end, with the profiler off
