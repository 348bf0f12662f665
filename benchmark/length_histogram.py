"""Measure the token-length histogram of a conversation JSONL and store it for perf_train's real-length mode.

perf_train.py --lengths real draws conversation lengths from benchmark/data/medical_lengths.json, so a fresh
clone reproduces the real-length numbers without the data. That file was made from MedicalGPT's 1,000 ShareGPT
conversations and 87 QA pairs (Apache-2.0; put them in raw/MedicalGPT/) plus the identity data, prepared as the
recipe prepares them, with the real Qwen3 tokenizer shipped in tests/fixtures/qwen3:

    python data/prepare_data.py --input raw/MedicalGPT/medicalgpt_medical_sft_1K.sharegpt.jsonl \
        --input raw/MedicalGPT/medicalgpt_medical_qa_87.jsonl --identity data/lora_identity.jsonl:3 \
        --tokenizer tests/fixtures/qwen3 --output /tmp/real.jsonl
    python benchmark/length_histogram.py --data /tmp/real.jsonl --tokenizer tests/fixtures/qwen3

Only the histogram is committed, never the data.
"""

import json
from pathlib import Path

from medqwen.cli import run_script
from medqwen.perf.config import LengthHistogramConfig


def main(cfg: LengthHistogramConfig) -> dict:
    from medqwen.chat import load_tokenizer
    from medqwen.data.conversations import read_conversations
    from medqwen.perf.data import conversation_token_counts

    tokenizer = load_tokenizer(cfg.tokenizer, cfg.chat_template)
    conversations = [c["conversations"] for c in read_conversations(cfg.data)]
    lengths, assistant = conversation_token_counts(tokenizer, conversations, cfg.max_seq_len)
    counts: dict[int, int] = {}
    for n in lengths:
        counts[n] = counts.get(n, 0) + 1
    hist = {"how": cfg.note, "tokenizer": Path(cfg.tokenizer).name, "max_seq_len": cfg.max_seq_len,
            "conversations": len(lengths), "assistant_fraction": round(sum(assistant) / sum(lengths), 4),
            "length_counts": {str(k): counts[k] for k in sorted(counts)}}
    Path(cfg.output).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.output).write_text(json.dumps(hist, indent=0) + "\n", encoding="utf-8")
    ordered = sorted(lengths)
    print(f"{len(lengths)} conversations, mean {sum(lengths) / len(lengths):.0f} tokens, "
          f"p50 {ordered[len(ordered) // 2]}, p95 {ordered[int(0.95 * len(ordered))]}, "
          f"assistant fraction {hist['assistant_fraction']}; wrote {cfg.output}")
    return hist


if __name__ == "__main__":
    run_script(LengthHistogramConfig, main)
