"""Preference pairs in the layouts users have, read into one layout: validated, escaped, de-duplicated, length-filtered.

    python data/prepare_preference.py --input data/medical_preference_sample.jsonl \
        --output data/medical_preference.jsonl

Layouts, detected per file from its first record:

    medicalgpt  {"system", "history": [[question, answer], ...], "question", "response_chosen", "response_rejected"}
    trl         {"prompt", "chosen", "rejected"}: strings (a user turn and an assistant reply) or message lists;
                without "prompt", chosen and rejected are whole conversations and the prompt is what they share

Every pair becomes TRL's conversational layout with an explicit prompt, the layout the trainer reads:

    {"prompt": [{"role": "system", ...}, {"role": "user", ...}], "chosen": [{"role": "assistant", "content": ...}],
     "rejected": [{"role": "assistant", "content": ...}]}

The checks are the SFT data's (medqwen.data): roles and turn order, empty text, lone surrogates, control tokens
escaped (or refused); and one more, `same_responses`, for a pair whose replies are the same text. Bad records raise
DataError ("path:line: why"), or with `skip_invalid` are counted by reason.
"""

from __future__ import annotations

import json
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medqwen.chat import load_tokenizer
from medqwen.configlib import UserError, repo_path
from medqwen.data.formats import as_text, check_text, from_messages, required_text, validate
from medqwen.data.prepare import (
    INVALID_REASONS,
    SKIP_HINT,
    InputSpec,
    deduplicate,
    length_tokenizer_dir,
    output_paths,
    parse_inputs,
    percentiles,
    write_prepared,
)
from medqwen.data.readers import DataError, RecordError, iter_records
from medqwen.reporting import markdown_table, run_meta
from medqwen.train.dpo_config import PreferenceDataConfig

PREFERENCE_INVALID_REASONS = INVALID_REASONS + ("same_responses",)
PREFERENCE_DROP_REASONS = ("duplicate", "too_long")
FORMAT_HINT = ("expected MedicalGPT's question/response_chosen/response_rejected (with optional system/history) or "
               "TRL's prompt/chosen/rejected")


# ----------------------------------------------------------------------------------------------------------
# One record -> {"prompt": [...], "chosen": [assistant], "rejected": [assistant]}


def detect_preference_format(record: dict) -> str | None:
    """'medicalgpt', 'trl' or None, from a record's keys."""
    if "response_chosen" in record or "response_rejected" in record:
        return "medicalgpt"
    if "chosen" in record and "rejected" in record:
        return "trl"
    return None


def _messages(value: Any, where: str) -> list[dict]:
    """A message list (OpenAI shape, as medqwen.data reads it) from a TRL field."""
    if not isinstance(value, list) or not all(isinstance(m, dict) for m in value):
        raise RecordError("bad_value", f"field '{where}' must be text or a list of messages")
    return from_messages({"messages": value})


def from_medicalgpt(record: dict) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen text, rejected text) of a MedicalGPT preference record."""
    prompt = []
    system = record.get("system")
    if system is not None and as_text(system, "field 'system'").strip():
        prompt.append({"role": "system", "content": as_text(system, "field 'system'")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordError("bad_value", "field 'history' must be a list of [question, answer] pairs")
    for i, turn in enumerate(history, 1):
        if not (isinstance(turn, (list, tuple)) and len(turn) == 2):
            raise RecordError("bad_value", f"history turn {i} must be a [question, answer] pair")
        prompt += [{"role": "user", "content": as_text(turn[0], f"history turn {i} question")},
                   {"role": "assistant", "content": as_text(turn[1], f"history turn {i} answer")}]
    prompt.append({"role": "user", "content": required_text(record, "question")})
    return prompt, required_text(record, "response_chosen"), required_text(record, "response_rejected")


def _reply(value: Any, where: str) -> str:
    """The assistant reply of a TRL `chosen`/`rejected` field: text, or a list holding one assistant message."""
    if isinstance(value, str):
        return value
    messages = _messages(value, where)
    if len(messages) != 1 or messages[0]["role"] != "assistant" or messages[0].get("tool_calls"):
        raise RecordError("turn_order", f"field '{where}' must hold exactly one assistant reply (text, no tool calls)")
    return messages[0]["content"]


def from_trl(record: dict) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen text, rejected text) of a TRL preference record (explicit or implicit prompt)."""
    if "prompt" not in record:  # implicit prompt: two whole conversations that differ only in the last reply
        chosen, rejected = _messages(record["chosen"], "chosen"), _messages(record["rejected"], "rejected")
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        if chosen[:shared] != rejected[:shared] or len(chosen) != shared + 1 or len(rejected) != shared + 1:
            raise RecordError("turn_order", "without 'prompt', chosen and rejected must be the same conversation up "
                                            "to their last (assistant) turn")
        return chosen[:shared], _reply(chosen[shared:], "chosen"), _reply(rejected[shared:], "rejected")
    prompt = record["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    elif prompt is None:
        raise RecordError("missing_field", "missing field 'prompt'")
    else:
        prompt = _messages(prompt, "prompt")
    return prompt, _reply(record["chosen"], "chosen"), _reply(record["rejected"], "rejected")


def convert_pair(record: dict, fmt: str, system_prompt: str | None = None) -> dict:
    """One input record -> a validated pair in TRL's conversational layout; raises RecordError."""
    prompt, chosen, rejected = (from_medicalgpt if fmt == "medicalgpt" else from_trl)(record)
    prompt = [{**m, "content": m["content"].strip()} for m in prompt]
    chosen, rejected = chosen.strip(), rejected.strip()
    if system_prompt and prompt and prompt[0]["role"] != "system":
        prompt.insert(0, {"role": "system", "content": system_prompt})
    if not prompt or prompt[-1]["role"] not in ("user", "tool"):
        raise RecordError("turn_order", "the prompt must end with a user turn (the one the replies answer)")
    for reply in (chosen, rejected):
        validate(prompt + [{"role": "assistant", "content": reply}])
    if " ".join(chosen.split()) == " ".join(rejected.split()):
        raise RecordError("same_responses", "chosen and rejected are the same text: nothing to prefer")
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}]}


def pair_key(pair: dict) -> str:
    """Exact-duplicate key: roles and whitespace-normalised texts of prompt, chosen and rejected."""
    norm = lambda messages: [[m["role"], " ".join(m["content"].split())] for m in messages]  # noqa: E731
    return json.dumps([norm(pair["prompt"]), norm(pair["chosen"]), norm(pair["rejected"])], ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------------
# Files


@dataclass
class PairFileResult:
    path: Path
    format: str | None = None
    encoding: str | None = None
    read: int = 0
    escaped: int = 0
    pairs: list[dict] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # tokens of prompt + the longer reply, per kept pair
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, reason: str, message: str | None = None) -> None:
        self.dropped[reason] += 1
        if message and len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(message)


def load_pairs_file(path: Path, encoding: str = "auto", skip_invalid: bool = False, control_tokens: str = "escape",
                    system_prompt: str | None = None) -> PairFileResult:
    """Read, detect, convert, validate and escape one file. DataError on the first bad record unless skip_invalid."""
    result = PairFileResult(Path(path))
    result.encoding, records = iter_records(result.path, encoding)
    for line, record in records:
        result.read += 1
        try:
            if isinstance(record, RecordError):
                raise record
            if result.format is None:
                result.format = detect_preference_format(record)
                if result.format is None:
                    raise RecordError("unknown_format", f"cannot tell the layout from keys {sorted(record)[:8]}; "
                                                        + FORMAT_HINT)
            elif detect_preference_format(record) != result.format:
                raise RecordError("unknown_format", f"not a {result.format} record (keys {sorted(record)[:8]})")
            pair, escaped = check_text(convert_pair(record, result.format, system_prompt), control_tokens)
            result.pairs.append(pair)
            result.escaped += escaped
        except RecordError as err:
            if not skip_invalid:
                raise DataError(result.path, line, err.reason, f"{err.detail}\n{SKIP_HINT}") from None
            result.drop(err.reason, str(DataError(result.path, line, err.reason, err.detail)))
    return result


def read_pairs(path: str | Path, skip_invalid: bool = False) -> list[dict]:
    """The pairs of one preference file (any layout above), validated and escaped; the trainer's reader."""
    path = repo_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference data '{path}' not found. Use the shipped sample "
                                "data/medical_preference_sample.jsonl or prepare your own (docs/training.md):\n"
                                f"  python data/prepare_preference.py --input YOUR_FILE --output {path}")
    pairs = load_pairs_file(path, skip_invalid=skip_invalid).pairs
    if not pairs:
        raise UserError(f"{path}: no preference pairs found")
    return pairs


def pair_lengths(pairs: list[dict], tokenizer) -> list[int]:
    """Tokens of prompt + the longer reply, rendered with the chat template as training renders them."""
    lengths = []
    for pair in pairs:
        lengths.append(max(len(tokenizer.apply_chat_template(pair["prompt"] + pair[side], tokenize=True,
                                                             return_dict=True)["input_ids"])
                           for side in ("chosen", "rejected")))
    return lengths


# ----------------------------------------------------------------------------------------------------------
# The preparation step


def prepare_preferences(cfg: PreferenceDataConfig, verbose: bool = True) -> dict[str, Any]:
    """Read every input, drop duplicates and too-long pairs, write the output JSONL and its stats; the stats."""
    specs: list[InputSpec] = parse_inputs(cfg.input)
    if not specs:
        raise UserError("nothing to prepare: give --input FILE (repeatable)")
    paths = output_paths(cfg.output)
    if any(s.path.resolve() == paths["output"].resolve() for s in specs):
        raise UserError(f"--output {cfg.output} is also an input; write to a new file")
    # Read and validate everything before writing anything: a bad file never leaves a half-written output.
    results = [load_pairs_file(s.path, cfg.encoding, cfg.skip_invalid, cfg.control_tokens, cfg.system_prompt)
               for s in specs]
    if cfg.dedup:
        deduplicate(results, key=pair_key, items="pairs")
    tokenizer_dir = length_tokenizer_dir(cfg.tokenizer)
    if tokenizer_dir is not None:
        tokenizer = load_tokenizer(tokenizer_dir, chat_template=cfg.chat_template)
        for result in results:
            lengths = pair_lengths(result.pairs, tokenizer)
            keep = [cfg.max_seq_len <= 0 or n <= cfg.max_seq_len for n in lengths]
            for _ in range(keep.count(False)):
                result.drop("too_long")
            result.pairs = [p for p, k in zip(result.pairs, keep) if k]
            result.lengths = [n for n, k in zip(lengths, keep) if k]
    elif cfg.max_seq_len > 0 and verbose:
        print("warning: no tokenizer: no token-length statistics and no length filter", file=sys.stderr)

    merged = [p for r in results for p in r.pairs]
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(merged)
    stats = preference_stats(results, cfg, tokenizer_dir)
    write_prepared(merged, stats, cfg, paths)
    if verbose:
        print(preference_table(stats))
        print(f"\nwrote {paths['output']} ({len(merged)} pairs) and beside it {paths['stats'].name}, "
              f"{paths['config'].name}")
    return stats


def preference_stats(results: list[PairFileResult], cfg: PreferenceDataConfig, tokenizer_dir: Path | None) -> dict:
    """stats.json: `summary` (totals), `detail` (one entry per input) and `meta` (git hash, versions, seed)."""
    detail = []
    for r in results:
        assert r.read == len(r.pairs) + sum(r.dropped.values()), "every record read is kept or counted"
        detail.append({"input": str(r.path), "format": r.format, "encoding": r.encoding, "read": r.read,
                       "invalid": {k: v for k, v in r.dropped.items() if k in PREFERENCE_INVALID_REASONS},
                       **{k: r.dropped[k] for k in PREFERENCE_DROP_REASONS}, "kept": len(r.pairs),
                       "control_tokens_escaped": r.escaped, "token_length": percentiles(r.lengths),
                       "examples": r.examples})
    dropped = sum((r.dropped for r in results), Counter())
    summary = {"output": cfg.output, "files": len(results), "read": sum(r.read for r in results),
               "kept": sum(len(r.pairs) for r in results), "control_tokens_escaped": sum(r.escaped for r in results),
               "dropped": {k: dropped[k] for k in PREFERENCE_INVALID_REASONS + PREFERENCE_DROP_REASONS if dropped[k]},
               "tokenizer": str(tokenizer_dir) if tokenizer_dir else None, "max_seq_len": cfg.max_seq_len,
               "token_length": percentiles([n for r in results for n in r.lengths])}
    return {"summary": summary, "detail": detail, "meta": run_meta(cfg.seed)}


def preference_table(stats: dict[str, Any]) -> str:
    """Markdown: one row per input and a total row."""
    rows = []
    for d in stats["detail"]:
        invalid = ", ".join(f"{k} {v}" for k, v in sorted(d["invalid"].items())) or "0"
        rows.append([Path(d["input"]).name, d["format"], d["read"], invalid, d["duplicate"], d["too_long"],
                     d["control_tokens_escaped"], d["kept"]])
    s = stats["summary"]
    rows.append(["**total**", "", s["read"], sum(sum(d["invalid"].values()) for d in stats["detail"]),
                 *(s["dropped"].get(k, 0) for k in PREFERENCE_DROP_REASONS), s["control_tokens_escaped"], s["kept"]])
    return markdown_table(rows, ["input", "layout", "read", "invalid", "duplicate", "too long", "escaped", "kept"])
