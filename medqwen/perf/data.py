"""Benchmark data: length distributions (synthetic lognormal, or a stored real histogram), conversations of
given lengths, the tokenizer and the random model they train."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

from medqwen.configlib import REPO_ROOT
from medqwen.data.conversations import read_conversations
from medqwen.distributed import local_rank
from medqwen.modeling import random_qwen3


def synthetic_lengths(n: int, median: float = 280, sigma: float = 0.8, cap: int = 1024, floor: int = 32,
                      seed: int = 0) -> list[int]:
    """`n` lognormal sequence lengths (median `median` tokens, log-std `sigma`) clipped to [floor, cap]."""
    rng = random.Random(seed)
    mu = math.log(median)
    return [int(min(cap, max(floor, round(rng.lognormvariate(mu, sigma))))) for _ in range(n)]


REAL_LENGTHS = "benchmark/data/medical_lengths.json"  # made by benchmark/length_histogram.py (says from what)


def load_length_histogram(path: str | Path | None = None) -> dict:
    """The stored histogram of real conversation lengths: {"length_counts": {tokens: count}, "assistant_fraction",
    "how", ...}."""
    path = Path(path) if path else REPO_ROOT / REAL_LENGTHS
    if not path.is_file():
        raise FileNotFoundError(f"length histogram {path} not found; make it with benchmark/length_histogram.py")
    return json.loads(path.read_text(encoding="utf-8"))


def histogram_lengths(n: int, histogram: dict, cap: int, seed: int = 0) -> list[int]:
    """`n` lengths drawn (with replacement, seeded) from a histogram's conversations, capped at `cap` tokens."""
    population = [int(k) for k, count in histogram["length_counts"].items() for _ in range(count)]
    rng = random.Random(seed)
    return [min(cap, rng.choice(population)) for _ in range(n)]


def conversation_token_counts(tokenizer, conversations: list[list[dict]], max_seq_len: int
                              ) -> tuple[list[int], list[int]]:
    """(tokens, assistant tokens) of each conversation rendered with the tokenizer's chat template, truncated at
    max_seq_len as training truncates."""
    lengths, assistant = [], []
    for conversation in conversations:
        out = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        mask = list(out["assistant_masks"])[:max_seq_len]
        lengths.append(len(mask))
        assistant.append(sum(mask))
    return lengths, assistant


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
    or model/qwen3-tokenizer on a machine with only the tokenizer files, else the real Qwen3 tokenizer the
    repository ships for tests (the lengths are Qwen3's either way)."""
    if tokenizer:
        return Path(tokenizer)
    if shape == "tiny":
        return REPO_ROOT / "model/smollm2-135m-instruct"
    candidates = [REPO_ROOT / "model/qwen", REPO_ROOT / "model/qwen3-tokenizer"]
    return next((p for p in candidates if p.is_dir()), REPO_ROOT / "tests/fixtures/qwen3")


def benchmark_conversations(tokenizer, n: int, median_len: int, max_seq_len: int, seed: int,
                            data: str | None = None, lengths: str = "lognormal") -> list[list[dict]]:
    """`n` conversations: those of `data` (repeated as needed; real lengths), else synthetic ones whose lengths
    are lognormal (median `median_len`) or drawn from the stored real histogram (`lengths="real"`, with its
    share of assistant tokens), capped at `max_seq_len` tokens."""
    if data:
        conversations = [c["conversations"] for c in read_conversations(data)]  # the trainer's reader
        return (conversations * (n // len(conversations) + 1))[:n]
    probe = [{"role": "user", "content": " the"}, {"role": "assistant", "content": " the"}]
    overhead = len(tokenizer.apply_chat_template(probe, tokenize=True, return_dict=True)["input_ids"]) - 2
    if lengths == "real":
        histogram = load_length_histogram()
        drawn = histogram_lengths(n, histogram, max_seq_len, seed=seed)
        return synthetic_conversations(tokenizer, drawn, overhead, seed=seed,
                                       prompt_fraction=1 - histogram["assistant_fraction"])
    drawn = synthetic_lengths(n, median=median_len, cap=max_seq_len, seed=seed)
    return synthetic_conversations(tokenizer, drawn, overhead, seed=seed)


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
