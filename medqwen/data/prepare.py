"""The preparation pipeline: read every input, convert and validate, de-duplicate, sample, count tokens,
filter by length, merge with upsampling, shuffle, write the output atomically, and report."""

from __future__ import annotations

import glob
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medqwen import jsonl
from medqwen.chat import load_tokenizer, render
from medqwen.configlib import UserError, config_to_dict, repo_path
from medqwen.data.config import DataConfig
from medqwen.data.formats import (
    PLACEHOLDER,
    check_text,
    convert_record,
    dedup_key,
    detect_format,
    find_placeholder,
    layout_help,
    normalise,
    parse_mapping,
)
from medqwen.data.readers import DATA_SUFFIXES, DataError, RecordError, iter_records
from medqwen.reporting import markdown_table, pyplot, run_meta, save_figure

# Held-out identity probes (5 English, 5 Chinese). None occurs in data/lora_identity.jsonl (a test checks),
# so the trainer and evaluation can ask them to see whether the identity was learned, not memorised.
IDENTITY_PROBES = [
    "Could you tell me who you are?",
    "Please introduce yourself briefly.",
    "Who am I talking to right now?",
    "Tell me a little about yourself.",
    "What should I call you?",
    "请简单介绍一下你自己。",
    "我现在是在和谁聊天？",
    "能说说你的身份吗？",
    "该怎么称呼你？",
    "你到底是谁呀？",
]

# Reasons a record is dropped; stats count by these names.
INVALID_REASONS = ("encoding", "invalid_json", "unknown_format", "missing_field", "unknown_role", "turn_order",
                   "empty_content", "tool_call", "placeholder", "control_token", "bad_value", "malformed_csv",
                   "no_answer")
DROP_REASONS = ("duplicate", "sampled_out", "too_long")
# Well-formed records without question or answer text: skipped and counted with the defaults (there is nothing
# to fix in the file; public corpora hold a few), while malformed ones stop the run unless --skip_invalid.
WITHOUT_TEXT = ("empty_content", "no_answer")


# ----------------------------------------------------------------------------------------------------------
# One input file.


@dataclass
class InputSpec:
    path: Path
    repeat: int = 1
    identity: bool = False


@dataclass
class FileResult:
    spec: InputSpec
    format: str | None = None
    encoding: str | None = None
    read: int = 0
    escaped: int = 0  # kept records whose text spelled a control token, now escaped
    notes: dict[str, int] = field(default_factory=dict)  # repairs made to kept records (unanswered turns cut)
    conversations: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)

    def drop(self, reason: str, message: str | None = None) -> None:
        self.dropped[reason] += 1
        if message and len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(message)


def parse_inputs(inputs: list[str], identity: bool = False, default_repeat: int = 1) -> list[InputSpec]:
    """'path' or 'path:N' (upsample N times); a folder expands to its JSONL/JSON/CSV files, recursively, sorted."""
    specs = []
    for text in inputs:
        head, sep, tail = text.rpartition(":")
        path, repeat = (head, int(tail)) if sep and tail.isdigit() else (text, default_repeat)
        if repeat < 1:
            raise UserError(f"{text}: the upsampling factor after ':' must be >= 1")
        resolved = repo_path(path)
        if resolved.is_dir():
            files = sorted(p for p in resolved.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES)
            if not files:
                raise FileNotFoundError(f"{path}: folder holds no {'/'.join(DATA_SUFFIXES)} files")
        elif resolved.is_file():
            files = [resolved]
        else:
            raise FileNotFoundError(f"{path}: no such file or folder (see docs/data.md for how to "
                                    f"build data/lora_medical.jsonl, or use data/medical_sample.jsonl)")
        specs += [InputSpec(p, repeat, identity) for p in files]
    return specs


def _cmedqa_questions(answer_file: Path, encoding: str) -> dict[str, str]:
    """question_id -> text from the question.csv (or questions.csv) beside a cMedQA answer.csv."""
    from medqwen.data.readers import iter_csv, read_lines

    for name in ("question.csv", "questions.csv"):
        path = answer_file.with_name(name)
        if path.is_file():
            detected, lines, bad = read_lines(path, encoding)
            return {r["question_id"]: r["content"] for _, r in iter_csv(lines, bad, detected, path)
                    if isinstance(r, dict) and "question_id" in r and "content" in r}
    raise FileNotFoundError(f"{answer_file}: a cMedQA answer file needs question.csv beside it (the questions are "
                            "joined in by question_id)")


SKIP_HINT = ("Fix that record, or pass --skip_invalid to skip invalid records and count them by reason (nothing "
             "valid is dropped).")


def load_file(spec: InputSpec, cfg: DataConfig) -> FileResult:
    """Read, detect, convert and validate one file. Raises DataError on the first bad record unless skip_invalid;
    a file whose layout is not recognised raises one DataError naming the keys it saw, with or without it."""
    from tqdm.auto import tqdm

    result = FileResult(spec)
    identity = {"{{NAME}}": cfg.name, "{{AUTHOR}}": cfg.author} if spec.identity else None
    mapping = parse_mapping(getattr(cfg, "columns", None), getattr(cfg, "roles", None))
    result.encoding, records = iter_records(spec.path, cfg.encoding)
    questions: dict[str, str] | None = None
    first_error: DataError | None = None
    for line, record in tqdm(records, desc=spec.path.name, unit=" rec", mininterval=1.0, leave=False,
                             disable=None):
        try:
            if isinstance(record, RecordError):
                raise record
            record = normalise(record, mapping)
            if result.format is None:
                result.format = detect_format(record)
                if result.format is None:
                    raise DataError(spec.path, line, "unknown_format", layout_help(sorted(map(str, record))))
                if result.format == "cmedqa_question":  # read through the answer file beside it
                    return result
            if result.format == "cmedqa_answer":
                questions = _cmedqa_questions(spec.path, cfg.encoding) if questions is None else questions
                record["question"] = questions.get(record.get("question_id"))
            converted = convert_record(record, result.format, identity, cfg.system_prompt, result.notes)
            conversation, escaped = check_text(converted, cfg.control_tokens)
            result.read += 1
            result.conversations.append(conversation)
            result.escaped += escaped
        except RecordError as err:
            result.read += 1
            located = DataError(spec.path, line, err.reason, err.detail)
            if not cfg.skip_invalid and err.reason not in WITHOUT_TEXT:
                raise DataError(spec.path, line, err.reason, f"{err.detail}\n{SKIP_HINT}") from None
            first_error = first_error or located
            result.drop(err.reason, str(located))
    if result.read and not result.conversations and set(result.dropped) <= {"invalid_json", "encoding"}:
        # nothing in the file parsed: one message for the file, not one count per line
        raise DataError(spec.path, first_error.line if first_error else 1, "invalid_json",
                        f"no record of this file could be read ({dict(result.dropped)}); is it JSON Lines, a JSON "
                        f"array or CSV in the detected encoding {result.encoding}? (--encoding forces one)")
    return result


# ----------------------------------------------------------------------------------------------------------
# Token lengths, the whole pipeline, and the report.


def default_tokenizer_dir() -> Path | None:
    """model/qwen when present, else the bundled SmolLM2, else None (no length statistics)."""
    for folder in ("model/qwen", "model/smollm2-135m-instruct"):
        if (repo_path(folder) / "config.json").is_file():
            return repo_path(folder)
    return None


def length_tokenizer_dir(choice: str) -> Path | None:
    """The tokenizer folder a `--tokenizer` value names for token lengths: 'auto' (default_tokenizer_dir),
    'none' (no length statistics, no length filter), or a folder (relative ones also under the repository)."""
    lowered = choice.lower()
    if lowered == "none":
        return None
    return default_tokenizer_dir() if lowered == "auto" else repo_path(choice)


def write_prepared(rows: list[dict], stats: dict, cfg: Any, paths: dict[str, Path]) -> None:
    """The output JSONL, then beside it config.yaml and stats.json, each atomically: a failed run leaves the
    previous output's sidecars as they were. The temporaries of an earlier killed run go first."""
    remove_stale_temporaries(paths)
    jsonl.write_jsonl(rows, paths["output"])
    jsonl.write_text_atomic(yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False), paths["config"])
    jsonl.write_text_atomic(json.dumps(stats, ensure_ascii=False, indent=2), paths["stats"])


def token_lengths(conversations: list[dict], tokenizer, batch_size: int = 256) -> list[int]:
    """Tokens per conversation as training sees it: rendered with our chat template, then tokenized."""
    from tqdm.auto import tqdm

    lengths = []
    for start in tqdm(range(0, len(conversations), batch_size), desc="tokens", unit=" batch", leave=False,
                      disable=None):
        batch = conversations[start:start + batch_size]
        texts = [render(tokenizer, c["conversations"], tools=c.get("tools")) for c in batch]
        lengths += [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return lengths


def percentiles(values: list[int]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    import numpy as np

    arr = np.asarray(values)
    out = {"n": int(arr.size), "mean": round(float(arr.mean()), 1), "max": int(arr.max())}
    out.update({f"p{q}": round(float(np.percentile(arr, q)), 1) for q in (50, 90, 95, 99)})
    return out


def output_paths(output: str | Path) -> dict[str, Path]:
    """The output JSONL and the files written beside it (named after it, so two outputs can share a folder)."""
    output = Path(output)
    stem = output.with_suffix("") if output.suffix else output
    return {"output": output, "stats": Path(f"{stem}.stats.json"), "histogram": Path(f"{stem}.length_hist.png"),
            "config": Path(f"{stem}.config.yaml")}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(paths: dict[str, Path]) -> list[Path]:
    """Delete `<output>.<pid>.tmp` (and the sidecars' ones) left by an earlier run that was killed mid-write;
    a temporary file of a run still alive (another process writing the same output) is left alone."""
    removed = []
    for path in paths.values():
        for tmp in path.parent.glob(f"{glob.escape(path.name)}.*.tmp"):
            pid = tmp.name[len(path.name) + 1:-len(".tmp")]
            if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


def deduplicate(results: list, key=dedup_key, items: str = "conversations") -> None:
    """Drop exact duplicates across all inputs, keeping the first occurrence (inputs in the order given); each
    result's `items` list (conversations, or preference pairs) is filtered and the drops counted."""
    seen: set[str] = set()
    for result in results:
        unique = []
        for item in getattr(result, items):
            k = key(item)
            if k in seen:
                result.drop("duplicate")
                continue
            seen.add(k)
            unique.append(item)
        setattr(result, items, unique)


def sample(results: list[FileResult], max_per_input: int, seed: int) -> None:
    """Keep a seeded random sample of at most `max_per_input` conversations per file, in file order."""
    for result in results:
        n = len(result.conversations)
        if 0 < max_per_input < n:
            keep = sorted(random.Random(seed).sample(range(n), max_per_input))
            for _ in range(n - max_per_input):
                result.drop("sampled_out")
            result.conversations = [result.conversations[i] for i in keep]


def reply_prefixes(conversation: dict) -> list[dict]:
    """The conversation cut after each of its assistant replies but the last (tool calls are not replies),
    shortest first: the shorter trainable conversations it contains."""
    turns = conversation["conversations"]
    ends = [i + 1 for i, m in enumerate(turns[:-1]) if m["role"] == "assistant" and not m.get("tool_calls")]
    return [{**conversation, "conversations": turns[:end]} for end in ends]


def filter_lengths(results: list[FileResult], tokenizer, max_seq_len: int) -> None:
    """Count tokens per conversation (kept in `result.lengths`); one over `max_seq_len` (0: no limit) is cut after
    its last assistant reply that fits (counted in notes `cut_to_fit`), and dropped only when even its first
    reply does not fit: a long consultation still teaches its opening exchanges. The lengths kept are those
    read, before any cut (the histogram shows how much is over the limit)."""
    for result in results:
        result.lengths = token_lengths(result.conversations, tokenizer)
        if max_seq_len <= 0:
            continue
        kept = []
        for conversation, n in zip(result.conversations, result.lengths):
            if n > max_seq_len:
                prefixes = reply_prefixes(conversation)
                fitting = [p for p, m in zip(prefixes, token_lengths(prefixes, tokenizer)) if m <= max_seq_len]
                if not fitting:
                    result.drop("too_long")
                    continue
                conversation = fitting[-1]
                result.notes["cut_to_fit"] = result.notes.get("cut_to_fit", 0) + 1
            kept.append(conversation)
        result.conversations = kept


def build_stats(results: list[FileResult], written: int, cfg: DataConfig, tokenizer_dir: Path | None) -> dict:
    """stats.json: `summary` (totals), `detail` (one entry per input file) and `meta` (git hash, versions, seed)."""
    detail = []
    for r in results:
        assert r.read == len(r.conversations) + sum(r.dropped.values()), "every record read is kept or counted"
        detail.append({"input": str(r.spec.path), "identity": r.spec.identity, "format": r.format,
                       "encoding": r.encoding, "repeat": r.spec.repeat, "read": r.read,
                       "invalid": {k: v for k, v in r.dropped.items() if k in INVALID_REASONS},
                       **{k: r.dropped[k] for k in DROP_REASONS},
                       "kept": len(r.conversations), "written": len(r.conversations) * r.spec.repeat,
                       "control_tokens_escaped": r.escaped, **r.notes,
                       "token_length": percentiles(r.lengths), "examples": r.examples})
    dropped = sum((r.dropped for r in results), Counter())
    summary = {"output": cfg.output, "files": len(results), "read": sum(r.read for r in results),
               "kept": sum(len(r.conversations) for r in results), "written": written,
               "control_tokens_escaped": sum(r.escaped for r in results),
               "dropped": {k: dropped[k] for k in INVALID_REASONS + DROP_REASONS if dropped[k]},
               "tokenizer": str(tokenizer_dir) if tokenizer_dir else None, "max_seq_len": cfg.max_seq_len,
               "token_length": percentiles([n for r in results for n in r.lengths])}
    return {"summary": summary, "detail": detail, "meta": run_meta(cfg.seed)}


def prepare(cfg: DataConfig, verbose: bool = True) -> dict[str, Any]:
    """Run the whole preparation; returns the stats that are also written to `<output stem>.stats.json`."""
    specs = parse_inputs(cfg.input) + parse_inputs(cfg.identity, identity=True, default_repeat=cfg.identity_upsample)
    if not specs:
        raise UserError("nothing to prepare: give --input FILE (repeatable) and/or --identity FILE")
    paths = output_paths(cfg.output)
    if any(s.path.resolve() == paths["output"].resolve() for s in specs):
        raise UserError(f"--output {cfg.output} is also an input; write to a new file")
    for value in (cfg.name, cfg.author):
        if PLACEHOLDER.search(value):
            raise UserError(f"--name/--author must not contain '{{{{' or '}}}}': {value!r}")
    if paths["output"].is_dir():
        raise UserError(f"--output {cfg.output} is a folder; give a file name, e.g. {paths['output'] / 'data.jsonl'}")
    # Read and validate everything before writing anything, so a bad file never leaves a half-written output.
    results = [load_file(spec, cfg) for spec in specs]
    if cfg.dedup:
        deduplicate(results)
    sample(results, cfg.max_per_input, cfg.seed)
    tokenizer_dir = length_tokenizer_dir(cfg.tokenizer)
    if tokenizer_dir is not None:
        filter_lengths(results, load_tokenizer(tokenizer_dir, chat_template=cfg.chat_template), cfg.max_seq_len)
    elif cfg.max_seq_len > 0 and verbose:
        print("warning: no tokenizer (--tokenizer none, or auto found neither model/qwen nor the bundled model): "
              "no token-length statistics and no length filter", file=sys.stderr)

    merged = [c for r in results for c in r.conversations for _ in range(r.spec.repeat)]
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(merged)
    for conversation in merged:  # last line of defence: no placeholder reaches training data
        leftover = find_placeholder(conversation, strict=False)
        if leftover is not None:
            raise RuntimeError(f"placeholder survived into the output: {leftover[:80]!r}")
    stats = build_stats(results, len(merged), cfg, tokenizer_dir)
    write_prepared(merged, stats, cfg, paths)
    if stats["summary"]["token_length"]["n"]:
        plot_lengths(results, cfg.max_seq_len, paths["histogram"])
    if verbose:
        print(summary_table(stats))
        print(f"\nwrote {paths['output']} ({len(merged)} conversations) and beside it {paths['stats'].name}, "
              + (f"{paths['histogram'].name}, " if stats["summary"]["token_length"]["n"] else "")
              + paths["config"].name)
    return stats


def plot_lengths(results: list[FileResult], max_seq_len: int, path: Path) -> None:
    """Histogram of tokens per conversation, one colour per input, with the length limit marked."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    data = [r.lengths for r in results if r.lengths]
    labels = [r.spec.path.name + (" (identity)" if r.spec.identity else "") for r in results if r.lengths]
    ax.hist(data, bins=50, stacked=True, label=labels)
    if max_seq_len > 0:
        ax.axvline(max_seq_len, color="red", linestyle="--", label=f"max_seq_len = {max_seq_len}")
    ax.set_xlabel("tokens per conversation (chat template applied)")
    ax.set_ylabel("conversations")
    ax.set_title("Conversation length before the length filter (unique conversations)")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def summary_table(stats: dict[str, Any]) -> str:
    """Markdown: one row per input, then the token-length percentiles."""
    rows = []
    for d in stats["detail"]:
        invalid = ", ".join(f"{k} {v}" for k, v in sorted(d["invalid"].items())) or "0"
        rows.append([Path(d["input"]).name + (" (identity)" if d["identity"] else ""), d["format"], d["encoding"],
                     d["read"], invalid, d["duplicate"], d["sampled_out"], d["too_long"], d.get("cut_to_fit", 0),
                     d["kept"], f"x{d['repeat']}", d["written"]])
    s = stats["summary"]
    rows.append(["**total**", "", "", s["read"], sum(sum(d["invalid"].values()) for d in stats["detail"]),
                 *(s["dropped"].get(k, 0) for k in DROP_REASONS), sum(d.get("cut_to_fit", 0) for d in stats["detail"]),
                 s["kept"], "", s["written"]])
    table = markdown_table(rows, ["input", "format", "encoding", "read", "invalid", "duplicate", "sampled out",
                                  "too long", "cut to fit", "kept", "upsample", "written"])
    t = s["token_length"]
    if t.get("n"):
        table += "\n\n" + markdown_table([[t["n"], t["mean"], t["p50"], t["p90"], t["p95"], t["p99"], t["max"]]],
                                         ["conversations", "mean tokens", "p50", "p90", "p95", "p99", "max"])
    return table
