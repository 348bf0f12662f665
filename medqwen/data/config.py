"""Data preparation's config (data/prepare_data.py)."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import DEFAULT_TEMPLATE, _f


@dataclass
class DataConfig:
    """data/prepare_data.py: convert, validate, de-duplicate, filter, merge and write conversation JSONL."""

    input: list[str] = _f([], "Input file or folder (repeatable). Formats are detected per file; "
                              "append ':N' to upsample a file N times (e.g. data/lora_identity.jsonl:3).")
    identity: list[str] = _f([], "Identity file(s) with {{NAME}}/{{AUTHOR}} placeholders (repeatable).")
    identity_upsample: int = _f(1, "How many times identity conversations are repeated in the output "
                                   "(an identity file given as 'path:N' uses N instead).")
    name: str = _f("MedQwen", "Assistant name filled into {{NAME}}.", env="ASSISTANT_NAME")
    author: str = _f("MedQwen Team", "Author name filled into {{AUTHOR}}.", env="ASSISTANT_AUTHOR")
    output: str = _f("data/lora_medical_merged.jsonl", "Merged conversation JSONL to write; <stem>.stats.json, "
                                                       "<stem>.length_hist.png and <stem>.config.yaml go beside it.")
    encoding: str = _f("auto", "Text encoding of the inputs (auto: a BOM's UTF-8/UTF-16, UTF-16 without BOM, UTF-8, "
                               "else GB18030/GBK).",
                       choices=["auto", "utf-8", "utf-8-sig", "gb18030", "gbk", "utf-16", "utf-16-le", "utf-16-be"])
    columns: str | None = _f(None, "Field mapping for layouts not detected: ours=theirs pairs, e.g. "
                                   "question=medical_case,answer=doctor_diagnosis (dotted paths reach nested fields; "
                                   "also system, history, instruction, input, output, messages, role, content).")
    roles: str | None = _f(None, "Role-name mapping for conversation turns, e.g. patient=user,doctor=assistant.")
    system_prompt: str | None = _f(None, "System message added to conversations that have none (None: leave).")
    skip_invalid: bool = _f(False, "Skip invalid records (counted by reason) instead of stopping at the first.")
    control_tokens: str = _f("escape", "Text that spells a control token (<|im_start|>, <think>, <tool_call>...): "
                                       "escape it (a zero-width space after '<'; counted) or refuse the record.",
                             choices=["escape", "refuse"])
    dedup: bool = _f(True, "Drop exact duplicate conversations (after normalising whitespace).")
    max_per_input: int = _f(0, "Keep at most this many conversations per input file: a seeded random sample taken "
                               "after validation and de-duplication, before the length filter (0: keep all).")
    tokenizer: str = _f("auto", "Tokenizer folder for token-length statistics and the length filter ('auto': "
                                "model/qwen if present, else model/smollm2-135m-instruct; 'none': skip both).")
    chat_template: str = _f(DEFAULT_TEMPLATE, "Chat template used to count tokens as training sees them.")
    max_seq_len: int = _f(1024, "Longest conversation in tokens (our chat template): a longer one is cut after "
                               "its last assistant reply that fits, or dropped when its first reply does not fit "
                               "(0: keep all).")
    shuffle: bool = _f(True, "Shuffle the merged output (seeded).")
    seed: int = _f(42, "Random seed for shuffling and for --max_per_input sampling.")
