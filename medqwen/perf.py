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
from dataclasses import dataclass, field
from pathlib import Path

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


def read_jsonl_conversations(path: str | Path, limit: int | None = None) -> list[list[dict]]:
    """Message lists from conversation JSONL (`conversations` or `messages`), for real length distributions."""
    rows = []
    with Path(path).open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            messages = record.get("conversations", record.get("messages")) if isinstance(record, dict) else None
            if not isinstance(messages, list) or not messages:
                raise ValueError(f"{path}:{lineno}: expected a 'conversations' (or 'messages') list")
            rows.append(messages)
            if limit and len(rows) >= limit:
                break
    return rows


def filler_words(tokenizer, candidates: str = "the of and to in is that for it with as was on be at by this "
                 "had not are but from or have an they which one you were her all she there would their we him "
                 "been has when who will more no if out so said what up its about into than them can only other "
                 "new some could time these two may then do first any my now such like our over man me even "
                 "most made after also did many before must through back years where much your way well down") -> list[str]:
    """Words that are one token each with a leading space, so text of k words is k tokens."""
    words = [w for w in candidates.split() if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1]
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


@dataclass
class StepTimer:
    """Wall time of optimizer steps, synchronising the accelerator so queued kernels are counted."""

    sync: object = None
    times: list[float] = field(default_factory=list)
    _t: float = 0.0

    def start(self) -> None:
        if self.sync:
            self.sync()
        self._t = time.perf_counter()

    def stop(self) -> float:
        if self.sync:
            self.sync()
        dt = time.perf_counter() - self._t
        self.times.append(dt)
        return dt


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


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
