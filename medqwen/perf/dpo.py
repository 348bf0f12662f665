"""Preference-training speed: pairs of the real length distribution as token ids, the FLOPs of a DPO step, and
the recipes benchmark/perf_dpo.py times."""

from __future__ import annotations

import random
from dataclasses import dataclass

from medqwen.configlib import _f
from medqwen.perf.data import histogram_lengths, load_length_histogram
from medqwen.perf.flops import forward_flops, lora_train_flops

# name -> DpoConfig fields over the same step (8 pairs): TRL's DPOTrainer as it comes, then our kernels.
DPO_VARIANTS = {
    "trl": {},  # TRL's defaults: gradient checkpointing, PEFT's LoRA forward, padded batches
    "fused": {"fused_lora": True},
    "fused-nogc": {"fused_lora": True, "gradient_checkpointing": False},
    "compiled-nogc": {"fused_lora": True, "compile_layers": True, "gradient_checkpointing": False},
    "24gb": {"fused_lora": True, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 4},
}
MEMORY_CAPS_GIB = {"24gb": 24.0}  # variants that must fit a card of this size


@dataclass
class PerfDpoConfig:
    """benchmark/perf_dpo.py: time a DPO optimizer step (policy forward/backward + reference forward) on a random
    model of a real shape over pairs of the real length distribution; tok/s, MFU, peak memory."""

    shape: str = _f("qwen3-4b", "Random model shape from medqwen.modeling.QWEN3_SHAPES.", choices=["qwen3-4b", "tiny"])
    variants: list[str] = _f(list(DPO_VARIANTS), "Recipes to time (medqwen.perf.dpo.DPO_VARIANTS), each in its own "
                                                 "process.")
    tokenizer: str | None = _f(None, "Tokenizer folder (None: model/qwen, else model/qwen3-tokenizer, else "
                                     "tests/fixtures/qwen3; tiny shape: the bundled model's).")
    loss: str = _f("sigmoid", "Preference loss (sigmoid: DPO with a reference pass; orpo: none).")
    pairs_per_step: int = _f(8, "Pairs per optimizer step (per_device_train_batch_size x accumulation).", at_least=1)
    max_seq_len: int = _f(1024, "Longest prompt + reply (tokens).")
    warmup_steps: int = _f(2, "Optimizer steps run before timing.")
    steps: int = _f(4, "Timed optimizer steps per variant.")
    variant_timeout_s: int = _f(300, "A variant still running after this many seconds is stopped.")
    peak_tflops: float | None = _f(None, "bf16 matmul peak for MFU (None: measured here).")
    seed: int = _f(0, "Seed of the lengths, the token ids and the model.")
    output_dir: str = _f("out/perf-dpo", "Where results.json and results.md go.")
    profile: bool = _f(False, "Run one more optimizer step per variant under torch.profiler (not timed) and write "
                              "its kernel table to profile_<variant>.txt.")
    run_one: str | None = _f(None, "Internal: time this one variant in this process.")


def benchmark_pairs(n: int, max_seq_len: int, vocab_limit: int, seed: int = 0) -> list[dict[str, list[int]]]:
    """`n` tokenized pairs: prompt + chosen is one real conversation length (the histogram's), split by its
    assistant share; the rejected reply is the reply of another drawn length. Token ids are random (speed does
    not depend on them)."""
    histogram = load_length_histogram()
    reply_share = histogram["assistant_fraction"]
    totals = histogram_lengths(2 * n, histogram, max_seq_len, seed=seed)
    rng = random.Random(seed)
    ids = lambda k: [rng.randrange(vocab_limit) for _ in range(k)]  # noqa: E731
    pairs = []
    for first, second in zip(totals[0::2], totals[1::2]):
        prompt = max(1, round(first * (1 - reply_share)))
        chosen = max(1, first - prompt)
        rejected = max(1, min(second - round(second * (1 - reply_share)), max_seq_len - prompt))
        pairs.append({"prompt_ids": ids(prompt), "chosen_ids": ids(chosen), "rejected_ids": ids(rejected)})
    return pairs


def dpo_step_flops(config, lengths: list[int], lora_r: int, targets: list[str], reference: bool = True) -> float:
    """Useful FLOPs of a preference step over sequences of `lengths` (chosen and rejected, real tokens): the
    policy's LoRA forward + backward and, for DPO, the reference's forward (no gradients)."""
    flops = lora_train_flops(config, lengths, lora_r, targets)
    return flops + (forward_flops(config, lengths) if reference else 0.0)
