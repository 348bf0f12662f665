"""Training-speed arithmetic: FLOPs of a LoRA train step, MFU, length distributions, step timing.

Used by benchmark/perf_train.py; kept here so the formulas are tested and documented in one place.

    from medqwen.perf import lora_train_flops, synthetic_lengths
    lengths = synthetic_lengths(1000, median=280, cap=1024, seed=0)
    flops = lora_train_flops(model.config, lengths, lora_r=8, targets=[...])   # useful FLOPs of one pass
    mfu = flops / seconds / peak_flops
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from medqwen.config import TrainConfig
from medqwen.configlib import REPO_ROOT, resolve_config
from medqwen.distributed import local_rank
from medqwen.modeling import random_qwen3
from medqwen.reporting import markdown_table, write_metrics
from medqwen.training import read_conversations


# Linear layers of one Qwen3/Llama decoder layer: name -> (in_features, out_features) as a function of the config.
def projection_shapes(config) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear layer of one decoder layer."""
    h, inter = config.hidden_size, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}


def lora_train_flops(config, lengths: list[int], lora_r: int, targets: list[str]) -> float:
    """Useful FLOPs of one forward+backward pass of LoRA training over sequences of `lengths` (real tokens only).

    A matmul with a weight of P parameters costs 2P FLOPs per token forward. Backward computes the input gradient
    (another 2P) and, only for trainable weights, the weight gradient (2P more). So per token:

        frozen linear layers and the LM head (tied embeddings, frozen):   4 * P_frozen
        LoRA matrices A (r x in) and B (out x r), trainable:              6 * P_lora
        attention scores and values, causal, per sequence of length L:    3 * 4 * d_attn * L(L+1)/2 per layer
          (QK^T and PV are 2*d_attn FLOPs per query-key pair each; backward is twice forward)

    Recomputation (gradient checkpointing), padding and the optimizer step are not useful work and are not
    counted, so MFU falls when a recipe recomputes or pads. Norms, RoPE, SwiGLU and the loss are < 1% and left out.
    """
    shapes = projection_shapes(config)
    n_layers = config.num_hidden_layers
    frozen = sum(i * o for i, o in shapes.values()) * n_layers + config.vocab_size * config.hidden_size
    lora = sum(lora_r * (i + o) for name, (i, o) in shapes.items() if name in targets) * n_layers
    tokens = sum(lengths)
    d_attn = shapes["q_proj"][1]
    pairs = sum(n * (n + 1) / 2 for n in lengths)
    return (4 * frozen + 6 * lora) * tokens + 3 * 4 * d_attn * pairs * n_layers


def synthetic_lengths(n: int, median: float = 280, sigma: float = 0.8, cap: int = 1024, floor: int = 32,
                      seed: int = 0) -> list[int]:
    """`n` lognormal sequence lengths (median `median` tokens, log-std `sigma`) clipped to [floor, cap]."""
    rng = random.Random(seed)
    mu = math.log(median)
    return [int(min(cap, max(floor, round(rng.lognormvariate(mu, sigma))))) for _ in range(n)]


def length_summary(lengths: list[int]) -> dict[str, float]:
    """Count, mean, median, p90, max and total of a list of token lengths."""
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"count": len(ordered), "mean": round(sum(ordered) / len(ordered), 1), "median": pick(0.5),
            "p90": pick(0.9), "max": ordered[-1], "total": sum(ordered)}


# Common English words; most tokenizers (Qwen3's, SmolLM2's) keep " word" as a single token.
FILLER_WORDS = ("the of and to in is that for it with as was on be at by this had not are but from or have an they "
                "which one you were her all she there would their we him been has when who will more no if out so "
                "said what up its about into than them can only other new some could time these two may then do "
                "first any my now such like our over man me even most made after also did many before must "
                "through back years where much your way well down").split()


def filler_words(tokenizer, candidates: list[str] = FILLER_WORDS) -> list[str]:
    """Words that are one token each with a leading space, so text of k words is k tokens."""
    words = [w for w in candidates if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1]
    if len(words) < 8:
        raise ValueError("tokenizer splits the filler words; cannot build conversations of exact lengths")
    return words


def synthetic_conversations(tokenizer, lengths: list[int], chat_template_overhead: int, seed: int = 0,
                            prompt_fraction: float = 0.3) -> list[list[dict]]:
    """Conversations whose rendered length is about `lengths[i]` tokens: a user turn and an assistant reply.

    Content is random filler words (one token each); speed and memory do not depend on which tokens they are.
    `prompt_fraction` of the tokens are the user's (not trained on), the rest the assistant's.
    """
    rng = random.Random(seed)
    words = filler_words(tokenizer)
    conversations = []
    for n in lengths:
        body = max(2, n - chat_template_overhead)
        n_user = max(1, int(body * prompt_fraction))
        text = lambda k: " " + " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
        conversations.append([{"role": "user", "content": text(n_user)},
                              {"role": "assistant", "content": text(body - n_user)}])
    return conversations


def benchmark_tokenizer_dir(tokenizer: str | None, shape: str) -> Path:
    """The tokenizer a benchmark uses: the given folder; the bundled model's for the tiny shape; else model/qwen,
    or model/qwen3-tokenizer on a machine with only the tokenizer files."""
    if tokenizer:
        return Path(tokenizer)
    if shape == "tiny":
        return REPO_ROOT / "model/smollm2-135m-instruct"
    return next((p for p in (REPO_ROOT / "model/qwen", REPO_ROOT / "model/qwen3-tokenizer") if p.is_dir()),
                REPO_ROOT / "model/qwen")


def benchmark_conversations(tokenizer, n: int, median_len: int, max_seq_len: int, seed: int,
                            data: str | None = None) -> list[list[dict]]:
    """`n` conversations: those of `data` (repeated as needed; real lengths), else synthetic ones of lognormal
    lengths (median `median_len`, capped at `max_seq_len` tokens)."""
    if data:
        conversations = [c["conversations"] for c in read_conversations(data)]  # the trainer's reader
        return (conversations * (n // len(conversations) + 1))[:n]
    probe = [{"role": "user", "content": " the"}, {"role": "assistant", "content": " the"}]
    overhead = len(tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True)["input_ids"]) - 2
    lengths = synthetic_lengths(n, median=median_len, cap=max_seq_len, seed=seed)
    return synthetic_conversations(tokenizer, lengths, overhead, seed=seed)


def benchmark_model(shape: str, tokenizer, seed: int):
    """A random model of `shape` on this process's GPU in bf16 (CPU: fp32), with the tokenizer's special tokens;
    its own small vocabulary for the tiny shape. Makes that GPU this process's current device."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank())  # under accelerate launch: one GPU per process
    torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
    try:
        with torch.device(f"cuda:{local_rank()}" if cuda else "cpu"):  # on the GPU: a 4B model on CPU takes minutes
            return random_qwen3(shape, vocab_size=max(len(tokenizer), 256) if shape == "tiny" else None, seed=seed,
                                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
    finally:
        torch.set_default_dtype(torch.float32)


def matmul_peak_tflops(n: int = 8192, repeats: int = 10) -> float | None:
    """Measured bf16 matmul rate of this GPU (TFLOP/s) on random n x n x n products; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / repeats
    return 2 * n**3 / seconds / 1e12


# ----------------------------------------------------------------------------------------------------------
# Timing the trainer's real train step


# Named recipes: TrainConfig overrides on top of the defaults (the original recipe), or a preset YAML.
# A variant may add overrides after a colon: "24gb:per_device_train_batch_size=4:recompute_layers=20".
VARIANTS: dict[str, dict | str] = {
    # the seed recipe: pad to the longest in the batch, batch 8 x accumulation 8, gradient checkpointing, SDPA,
    # PEFT's own LoRA forward (our default fuses it: same math, faster)
    "original": {"attn_implementation": "sdpa", "fused_lora": False},
    # padding-free BFD packing: a row of <= max_seq_len tokens holds ~2.6 conversations, 8 x 3 rows ~ 64 of them
    "packed": {"packing": True, "gradient_accumulation_steps": 3, "attn_implementation": "sdpa",
               "fused_lora": False},
    "packed+liger": {"packing": True, "gradient_accumulation_steps": 3, "attn_implementation": "sdpa",
                     "fused_lora": False, "use_liger_kernel": True, "gradient_checkpointing": False},
    "packed+compile": {"packing": True, "gradient_accumulation_steps": 3, "attn_implementation": "sdpa",
                       "fused_lora": False, "gradient_checkpointing": False, "compile_layers": True},
    "fused": {"packing": True, "gradient_accumulation_steps": 3, "attn_implementation": "sdpa",
              "use_liger_kernel": True, "gradient_checkpointing": False, "fused_lora": True},
    "fused+varlen": {"packing": True, "gradient_accumulation_steps": 3, "attn_implementation": "varlen",
                     "use_liger_kernel": True, "gradient_checkpointing": False, "fused_lora": True},
    "speed": "configs/qwen3-4b/lora_speed_1xh200.yaml",
    "24gb": "configs/qwen3-4b/lora_24gb.yaml",
}


def variant_config(spec: str, base: dict):
    """TrainConfig of a variant spec (`name` or `name:field=value:field=value`) on top of `base` overrides."""
    name, _, extra = spec.partition(":")
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}")
    recipe = VARIANTS[name]
    cli = dict(base)
    if isinstance(recipe, str):
        cli["config"] = str(REPO_ROOT / recipe)
    else:
        cli.update(recipe)
    for item in filter(None, extra.split(":")):
        key, _, value = item.partition("=")
        cli[key.strip()] = value.strip()
    return resolve_config(TrainConfig, cli=cli)


class CountingCollator:
    """Wraps the trainer's collator and counts what each batch holds: real and computed tokens, sequences."""

    def __init__(self, collator):
        self.collator = collator
        self.real = self.computed = self.sequences = 0
        self.lengths: list[int] = []

    def __call__(self, examples):
        batch = self.collator(examples)
        ids = batch["input_ids"]
        self.computed += ids.numel()
        if "attention_mask" in batch:  # padded rows
            lengths = batch["attention_mask"].sum(dim=1).tolist()
        else:  # padding-free: one row, boundaries where position ids restart
            cu = batch["cu_seq_lens_q"]
            lengths = (cu[1:] - cu[:-1]).tolist()
        self.real += sum(lengths)
        self.sequences += len(lengths)
        self.lengths.extend(lengths)
        return batch


def time_trainer(trainer, warmup_steps: int, steps: int, sync=None, profile_step: bool = False) -> dict:
    """Run warmup + timed optimizer steps of `trainer.train()`; per-step seconds, tokens and sequence lengths.

    With `profile_step`, one more optimizer step runs under torch.profiler (not timed: profiling slows it down);
    the result then has "profile", the profiler's per-kernel table of that step.
    """
    from transformers import TrainerCallback

    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    marks: list[tuple[float, int, int, int, int]] = []
    profiler = None
    if profile_step:
        profiler = kernel_profiler()

    class Marks(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.mark()

        def on_step_end(self, args, state, control, **kwargs):
            self.mark()
            if profiler is not None and state.global_step == warmup_steps + steps:
                profiler.start()  # only now: the profiler's hooks would slow the timed steps
            elif profiler is not None and state.global_step == warmup_steps + steps + 1:
                # before the end-of-training checkpoint, whose copies to the host are not part of a step
                profiler.stop()

        def mark(self):
            if sync:
                sync()  # queued kernels belong to the step they were launched in
            marks.append((time.perf_counter(), counter.real, counter.computed, counter.sequences,
                          len(counter.lengths)))

    trainer.add_callback(Marks())
    trainer.args.max_steps = warmup_steps + steps + (1 if profiler is not None else 0)
    trainer.train()
    rows = []
    for (t0, r0, c0, s0, l0), (t1, r1, c1, s1, l1) in zip(marks[:-1], marks[1:]):
        rows.append({"seconds": t1 - t0, "real_tokens": r1 - r0, "computed_tokens": c1 - c0,
                     "sequences": s1 - s0, "lengths": counter.lengths[l0:l1]})
    result = {"warmup": rows[:warmup_steps], "timed": rows[warmup_steps:warmup_steps + steps]}
    if profiler is not None:
        result["profile"] = profile_summary(profiler, rows[-1]["seconds"])
    return result


def merge_process_steps(per_process: list[list[dict]]) -> list[dict]:
    """One list of step rows from each process's (time_trainer rows): a step lasts as long as its slowest process
    (the gradient all-reduce makes the others wait), and its tokens, sequences and lengths are everyone's."""
    merged = []
    for rows in zip(*per_process):
        merged.append({"seconds": max(r["seconds"] for r in rows),
                       **{k: sum(r[k] for r in rows) for k in ("real_tokens", "computed_tokens", "sequences")},
                       "lengths": [n for r in rows for n in r["lengths"]]})
    return merged


def kernel_profiler():
    """A torch.profiler recording CPU ops and, where there is a GPU, its kernels (for profile_summary)."""
    import torch

    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return torch.profiler.profile(activities=activities)


def profile_summary(profiler, step_seconds: float, top: int = 45, what: str = "step") -> str:
    """The kernels of a profiled step (or other `what`) by total device time, and how busy the device was."""
    from torch.autograd import DeviceType

    events = profiler.key_averages()
    # kernels only: CPU-side ops also carry the device time of the kernels they launched
    device_us = sum(e.self_device_time_total for e in events if e.device_type != DeviceType.CPU)
    sort = "self_cuda_time_total" if device_us else "self_cpu_time_total"
    head = (f"profiled {what}: {step_seconds:.3f} s wall, device busy {device_us / 1e6:.3f} s "
            f"({100 * device_us / 1e6 / step_seconds:.0f}% of the {what})\n")
    return head + events.table(sort_by=sort, row_limit=top, max_name_column_width=90)


def write_report(results: list[dict], peak: float | None, out: Path, seed: int = 0) -> str:
    """The Markdown table of perf_train results (returned, and written to results.md), results.json, metrics.json.

    A row launched on several processes reports their sum (real tok/s), the mean per process, MFU against
    `processes` GPUs, the largest peak memory of any process, and its scaling over the same variant on one.
    """
    def single(variant):
        return next((r for r in results if r["variant"] == variant and r["launcher"] == "single"
                     and "real_tok_s" in r), None)

    base = single("original")
    table = []
    for r in results:
        processes = r["processes"]
        launch = r["launcher"] + (f" x{processes}" if r["launcher"] != "single" else "")
        if r["launcher"] == "fsdp" and "weights_sharded" in r and not r["weights_sharded"]:
            launch += f" (unsharded: ran as {r['distributed_type']})"
        if "real_tok_s" not in r:
            table.append([r["variant"], launch, r.get("error") or r.get("skipped")] + [""] * 9)
            continue
        mem = r["peak_allocated_gib"] if r["peak_allocated_gib"] is not None else r["peak_rss_gib"]
        median = round(r["median_step_tok_s"]) if r.get("median_step_tok_s") else ""
        one = single(r["variant"]) if processes > 1 else None
        table.append([r["variant"], launch, round(r["real_tok_s"]), round(r["real_tok_s"] / processes), median,
                      round(r["computed_tok_s"]), f"{100 * r['padding_fraction']:.0f}%",
                      f"{100 * r['tflops'] / (peak * processes):.1f}%" if peak else "n/a",
                      f"{mem:.1f}" + (f" ({r['peak_reserved_gib']:.1f})" if r["peak_reserved_gib"] else ""),
                      f"{r['conversations_per_step']:.0f}",
                      f"{r['real_tok_s'] / base['real_tok_s']:.2f}x" if base else "n/a",
                      f"{r['real_tok_s'] / one['real_tok_s']:.2f}x" if one else ""])
    headers = ["variant", "launch", "real tok/s", "per process", "median step real tok/s", "computed tok/s",
               "padding", "MFU", "peak GiB alloc (reserved)", "conversations/step", "vs original",
               "vs 1 process"]
    md = markdown_table(table, headers)
    note = (f"\nMFU against a measured bf16 matmul peak of {peak:.0f} TFLOP/s per GPU; FLOPs per "
            "medqwen.perf.lora_train_flops. Several processes: tok/s summed over them, peak memory of the fullest."
            if peak else "\nMFU: no GPU, no peak.")
    (out / "results.md").write_text(md + note + "\n", encoding="utf-8")
    (out / "results.json").write_text(json.dumps({"peak_tflops": peak, "results": results}, indent=2), encoding="utf-8")
    summary = {f"{r['variant']} on {r['launcher']}":
               {k: r.get(k) for k in ("real_tok_s", "processes", "peak_allocated_gib", "error", "skipped")}
               for r in results}
    write_metrics(out, summary, detail=results, seed=seed, meta_extra={"peak_tflops": peak})
    return md + note
