"""Data preparation: convert public medical dialogue formats into conversation JSONL, render identity data,
validate, de-duplicate, count tokens, filter by length, merge with upsampling, shuffle, and report.

    python data/prepare_data.py --input data/medical_sample.jsonl --identity data/lora_identity.jsonl \
        --output data/lora_medical_merged.jsonl

Every output line is one conversation in the OpenAI message shape (`tools` only when the input defined some):

    {"conversations": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."},
                       {"role": "assistant", "content": "..."}]}

Formats are detected per file from its first record: ShareGPT (`conversations` of `from`/`value`),
`conversations`/`messages` of `role`/`content` (tool calls and `tool` turns included), Alpaca
(`instruction`/`input`/`output`, optional `system`/`history`), question/answer pairs (`问`/`答`,
`question`/`answer`, ...), HuatuoGPT `data` lists ('问：...', '答：...'), and department CSVs
(`department,title,ask,answer`). Files are JSONL, JSON arrays or
CSV, in UTF-8 (with or without BOM) or GB18030/GBK (detected). Bad records raise `DataError` ("path:line: why");
with `skip_invalid` they are skipped and counted by reason instead.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from medqwen import jsonl
from medqwen.chat import escape_control_tokens, find_control_token, load_tokenizer, render
from medqwen.data_config import DataConfig
from medqwen.configlib import UserError, REPO_ROOT, config_to_dict, format_config
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

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bot": "assistant", "model": "assistant", "function_call": "assistant",
    "observation": "tool", "tool": "tool", "function": "tool",
}
QA_KEYS = [("问", "答"), ("question", "answer"), ("query", "response"), ("prompt", "response"), ("input", "output")]
CSV_SUFFIXES = (".csv",)
DATA_SUFFIXES = (".jsonl", ".json") + CSV_SUFFIXES
PLACEHOLDER = re.compile(r"\{\{|\}\}")

# Reasons a record is dropped; stats count by these names.
INVALID_REASONS = ("encoding", "invalid_json", "unknown_format", "missing_field", "unknown_role", "turn_order",
                   "empty_content", "tool_call", "placeholder", "control_token", "bad_value", "malformed_csv")
MAX_CSV_RECORD_LINES = 1000  # a quoted CSV field spanning more lines is taken for a stray quote
DROP_REASONS = ("duplicate", "sampled_out", "too_long")


class RecordError(ValueError):
    """A record that cannot be used; `reason` is one of INVALID_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class DataError(UserError):
    """Bad input, located: the message reads `path:line: what is wrong`."""

    def __init__(self, path: str | Path, line: int, reason: str, detail: str):
        super().__init__(f"{path}:{line}: {detail}")
        self.path, self.line, self.reason, self.detail = str(path), line, reason, detail


# ----------------------------------------------------------------------------------------------------------
# Reading: bytes -> decoded lines -> (line number, dict | RecordError).


def detect_encoding(raw_lines: list[bytes]) -> str:
    """'utf-8' when most non-ASCII lines are valid UTF-8, else 'gb18030' (a superset of GBK and GB2312).

    Chinese text in GB18030 is almost never valid UTF-8, so the majority vote is robust to a few corrupt lines.
    """
    non_ascii = [line for line in raw_lines if not line.isascii()]
    if not non_ascii:
        return "utf-8"
    utf8_ok = 0
    for line in non_ascii:
        try:
            line.decode("utf-8")
            utf8_ok += 1
        except UnicodeDecodeError:
            pass
    return "utf-8" if 2 * utf8_ok >= len(non_ascii) else "gb18030"


def read_lines(path: Path, encoding: str = "auto") -> tuple[str, list[str], set[int]]:
    """(encoding, decoded lines with their endings, 1-based numbers of lines that did not decode)."""
    raw = path.read_bytes()
    bom = raw.startswith(b"\xef\xbb\xbf")
    if bom:
        raw = raw[3:]
    raw_lines = raw.splitlines(keepends=True)
    if encoding == "auto":
        encoding = "utf-8" if bom else detect_encoding(raw_lines)
    lines, bad = [], set()
    for number, line in enumerate(raw_lines, 1):
        try:
            lines.append(line.decode(encoding))
        except UnicodeDecodeError:
            bad.add(number)
            lines.append(line.decode(encoding, errors="replace"))  # kept only to find record boundaries
    return encoding + ("-sig" if bom else ""), lines, bad


def _encoding_error(encoding: str, start: int, lines: set[int]) -> RecordError:
    where = "" if lines == {start} else f"line(s) {sorted(lines)} of this record: "
    return RecordError("encoding", f"{where}not valid {encoding} text (the encoding was detected from the whole "
                                   f"file; pass --encoding to force one)")


def iter_jsonl(lines: list[str], bad: set[int], encoding: str) -> Iterator[tuple[int, Any]]:
    """One JSON object per non-blank line."""
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        if number in bad:
            yield number, _encoding_error(encoding, number, {number})
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            yield number, RecordError("invalid_json", f"invalid JSON: {err.msg} (column {err.colno})")
            continue
        yield number, value if isinstance(value, dict) else RecordError(
            "invalid_json", f"expected a JSON object per line, got {type(value).__name__}")


def iter_json_array(lines: list[str], bad: set[int], encoding: str, path: Path) -> Iterator[tuple[int, Any]]:
    """Elements of a top-level JSON array, each with the line it starts on."""
    text = "".join(lines)
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    line, counted = 1, 0

    def line_at(offset: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, offset)
        counted = offset
        return line

    def skip(offset: int) -> int:
        while offset < len(text) and text[offset] in " \t\r\n":
            offset += 1
        return offset

    pos = skip(pos)
    if pos < len(text) and text[pos] == "]":
        return
    while True:
        start = line_at(pos)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            # Inside a broken array we cannot find the next element reliably: stop here, with the location.
            raise DataError(path, err.lineno, "invalid_json", f"invalid JSON array: {err.msg} (column {err.colno})")
        spanned = set(range(start, start + text.count("\n", pos, end) + 1)) & bad
        if spanned:
            yield start, _encoding_error(encoding, start, spanned)
        elif not isinstance(value, dict):
            yield start, RecordError("invalid_json", f"expected a JSON object, got {type(value).__name__}")
        else:
            yield start, value
        pos = skip(end)
        if pos < len(text) and text[pos] == ",":
            pos = skip(pos + 1)
        elif pos < len(text) and text[pos] == "]":
            return
        else:
            raise DataError(path, line_at(pos), "invalid_json", "invalid JSON array: expected ',' or ']'")


def _csv_width(line: str) -> int:
    """Columns of one line read as CSV on its own (-1 when it is not a complete row)."""
    try:
        return len(next(csv.reader([line.rstrip("\r\n")]), []))
    except csv.Error:
        return -1


def iter_csv(lines: list[str], bad: set[int], encoding: str, path: Path) -> Iterator[tuple[int, Any]]:
    """CSV rows as dicts keyed by the header; quoted fields may span lines.

    Records are found line by line: a record ends at the first line where its quotes balance. A stray quote
    (no partner within MAX_CSV_RECORD_LINES lines, or a span whose row has the wrong number of columns) makes
    only its own line invalid; reading re-synchronises on the next line, so no later valid row is swallowed.
    """
    csv.field_size_limit(2**31 - 1)  # the default (128K characters) rejects long answers
    header: list[str] | None = None
    i, n = 0, len(lines)
    while i < n:
        if not lines[i].strip():
            i += 1
            continue
        j, quotes = i, lines[i].count('"')
        while quotes % 2 and j + 1 < n and j - i < MAX_CSV_RECORD_LINES:
            j += 1
            quotes += lines[j].count('"')
        start = i + 1
        if quotes % 2:
            if header is None:
                raise DataError(path, start, "malformed_csv", "the header line has an unbalanced quote")
            yield start, RecordError("malformed_csv", "unbalanced quote: this line's quoted field never closes "
                                                      "(a stray \"?); the line is skipped, reading goes on")
            i += 1
            continue
        try:
            rows = list(csv.reader(io.StringIO("".join(lines[i:j + 1]), newline="")))
        except csv.Error as err:
            rows, error = [], str(err)
        else:
            error = None if len(rows) == 1 else f"{len(rows)} rows where one was expected"
        if header is None:
            if error:
                raise DataError(path, start, "malformed_csv", f"malformed CSV header: {error}")
            header = [h.strip().lstrip("\ufeff").lower() for h in rows[0]]
            i = j + 1
            continue
        spanned = set(range(start, j + 2)) & bad
        row = rows[0] if rows else []
        if error is None and len(row) != len(header) and j > i:
            error = f"a quoted field spans lines {start}-{j + 1} and the row has {len(row)} columns, not {len(header)}"
        elif error is None and j > i + 1 and all(_csv_width(line) == len(header) for line in lines[i + 1:j]):
            # every line inside the "field" is a complete row by itself: a stray quote paired with a later one
            error = f"a quoted field would swallow the complete rows on lines {start + 1}-{j}"
        if error is not None:  # re-sync on the next line: the lines after a stray quote are read on their own
            yield start, RecordError("malformed_csv", f"malformed CSV: {error}; the line is skipped")
            i += 1
            continue
        i = j + 1
        if not any(cell.strip() for cell in row):
            continue
        if spanned:
            yield start, _encoding_error(encoding, start, spanned)
        elif len(row) != len(header):
            yield start, RecordError("missing_field", f"expected {len(header)} CSV columns {header}, got {len(row)}")
        else:
            yield start, dict(zip(header, row))


def iter_records(path: Path, encoding: str = "auto") -> tuple[str, Iterator[tuple[int, Any]]]:
    """(detected encoding, iterator of (line, record dict or RecordError)) for a JSONL, JSON or CSV file."""
    encoding, lines, bad = read_lines(path, encoding)
    if path.suffix.lower() in CSV_SUFFIXES:
        return encoding, iter_csv(lines, bad, encoding, path)
    first = next((text.lstrip() for text in lines if text.strip()), "")
    if path.suffix.lower() == ".json" and first.startswith("["):
        return encoding, iter_json_array(lines, bad, encoding, path)
    return encoding, iter_jsonl(lines, bad, encoding)


# ----------------------------------------------------------------------------------------------------------
# Converting one record (any format) to a list of OpenAI-shaped messages.


def detect_format(record: dict) -> str | None:
    """The format name of one record, from its keys; None when no format fits."""
    for key in ("conversations", "messages"):
        turns = record.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            if "from" in turns[0] or "value" in turns[0]:
                return "sharegpt"
            if "role" in turns[0] or "content" in turns[0]:
                return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if isinstance(record.get("data"), list) and all(isinstance(t, str) for t in record["data"]):
        return "huatuo"
    if "ask" in record and "answer" in record:
        return "department_csv"
    if any(q in record and a in record for q, a in QA_KEYS):
        return "qa"
    return None


def as_text(value: Any, where: str) -> str:
    """A text field's value: a string, or a finite number written out; null, booleans, NaN and nested values
    are refused (str() would put "None", "nan" or "{'k': [1]}" into training text)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        what = "null" if value is None else type(value).__name__
        raise RecordError("bad_value", f"{where} must be text, got {what}")
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return str(value)
    raise RecordError("bad_value", f"{where} must be text, got {value!r}")


def _text(record: dict, key: str, where: str = "") -> str:
    if key not in record or record[key] is None:
        raise RecordError("missing_field", f"missing field '{key}'{where}")
    return as_text(record[key], f"field '{key}'{where}")


def _turns(record: dict) -> list:
    key = "conversations" if "conversations" in record else "messages"
    turns = record.get(key)
    if not isinstance(turns, list):
        raise RecordError("missing_field", "missing list field 'conversations' (or 'messages')")
    return turns


def _tool_calls(value: Any) -> list[dict]:
    """Tool calls in the OpenAI shape, arguments parsed to a JSON object."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RecordError("tool_call", f"tool call is not valid JSON: {err.msg}") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        function = call.get("function", call) if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RecordError("tool_call", "a tool call needs a function name")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as err:
                raise RecordError("tool_call", f"tool call arguments are not valid JSON: {err.msg}") from None
        if not isinstance(arguments, dict):
            raise RecordError("tool_call", "tool call arguments must be a JSON object")
        normalised = {"type": "function", "function": {"name": function["name"], "arguments": arguments}}
        if isinstance(call, dict) and call.get("id"):
            normalised["id"] = call["id"]
        out.append(normalised)
    if not out:
        raise RecordError("tool_call", "empty tool call list")
    return out


def _tools(record: dict) -> list | None:
    tools = record.get("tools")
    if isinstance(tools, str):  # LLaMA-Factory stores tool schemas as a JSON string
        try:
            tools = json.loads(tools) if tools.strip() else None
        except json.JSONDecodeError as err:
            raise RecordError("tool_call", f"'tools' is not valid JSON: {err.msg}") from None
    if tools in (None, []):
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RecordError("tool_call", "'tools' must be a list of function schemas")
    return tools


def from_sharegpt(record: dict) -> list[dict]:
    messages = [{"role": "system", "content": _text(record, "system")}] if record.get("system") else []
    for i, turn in enumerate(_turns(record), 1):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise RecordError("missing_field", f"turn {i} needs 'from' and 'value'")
        speaker = str(turn["from"]).strip().lower()
        if speaker not in SHAREGPT_ROLES:
            raise RecordError("unknown_role", f"unknown role {turn['from']!r} in turn {i} "
                                              f"(known: {', '.join(SHAREGPT_ROLES)})")
        if speaker == "function_call":
            messages.append({"role": "assistant", "content": "", "tool_calls": _tool_calls(turn["value"])})
        else:
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": _text(turn, "value", f" in turn {i}")})
    return messages


def _content(value: Any, where: str) -> str:
    """OpenAI content: a string, or a list of text parts (joined)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in value):
        return "".join(as_text(p.get("text", ""), f"content{where}") for p in value)
    raise RecordError("missing_field", f"content{where} must be a string or a list of text parts")


def from_messages(record: dict) -> list[dict]:
    messages = []
    for i, turn in enumerate(_turns(record), 1):
        if not isinstance(turn, dict) or "role" not in turn:
            raise RecordError("missing_field", f"turn {i} needs 'role' and 'content'")
        if "content" not in turn and not turn.get("tool_calls"):
            raise RecordError("missing_field", f"turn {i} needs 'content'")
        message = {"role": str(turn["role"]).strip().lower(), "content": _content(turn.get("content"), f" in turn {i}")}
        if turn.get("tool_calls"):
            message["tool_calls"] = _tool_calls(turn["tool_calls"])
        if isinstance(turn.get("reasoning_content"), str) and turn["reasoning_content"].strip():
            message["reasoning_content"] = turn["reasoning_content"]
        for key in ("tool_call_id", "name"):  # which call a tool result answers; kept for OpenAI-style consumers
            if message["role"] == "tool" and isinstance(turn.get(key), str):
                message[key] = turn[key]
        messages.append(message)
    return messages


def from_alpaca(record: dict) -> list[dict]:
    messages = [{"role": "system", "content": _text(record, "system")}] if record.get("system") else []
    for i, pair in enumerate(record.get("history") or [], 1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("missing_field", f"history item {i} must be a [question, answer] pair")
        messages += [{"role": "user", "content": as_text(pair[0], f"history item {i} question")},
                     {"role": "assistant", "content": as_text(pair[1], f"history item {i} answer")}]
    instruction = _text(record, "instruction")
    extra = "" if record.get("input") in (None, "") else as_text(record["input"], "field 'input'")
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": _text(record, "output")}]


def from_qa(record: dict) -> list[dict]:
    for q, a in QA_KEYS:
        if q in record or a in record:
            return [{"role": "user", "content": _text(record, q)}, {"role": "assistant", "content": _text(record, a)}]
    raise RecordError("missing_field", f"missing question/answer fields (one of {QA_KEYS})")


def from_huatuo(record: dict) -> list[dict]:
    """HuatuoGPT-sft-data-v1: `data` alternates '问：...' and '答：...' strings."""
    turns = record.get("data")
    if not isinstance(turns, list):
        raise RecordError("missing_field", "missing list field 'data'")
    return [{"role": ("user", "assistant")[i % 2], "content": re.sub(r"^\s*[问答][：:]", "", as_text(text, f"data[{i}]"))}
            for i, text in enumerate(turns)]


def from_department_csv(record: dict) -> list[dict]:
    """Chinese medical dialogue CSVs: the patient's title is a summary, `ask` the details ('无' when none)."""
    title = "" if record.get("title") is None else as_text(record["title"], "field 'title'").strip()
    ask = _text(record, "ask").strip()
    if ask in ("", "无") or ask.startswith(title):
        question = ask if ask not in ("", "无") else title
    else:
        question = f"{title}\n{ask}" if title else ask
    return [{"role": "user", "content": question}, {"role": "assistant", "content": _text(record, "answer")}]


CONVERTERS = {"sharegpt": from_sharegpt, "messages": from_messages, "alpaca": from_alpaca, "qa": from_qa,
              "huatuo": from_huatuo, "department_csv": from_department_csv}


def validate(messages: list[dict]) -> None:
    """Roles known; optional system first, then user/assistant alternating, tool turns only after a tool call;
    no empty content; ends with an assistant reply (the part that is trained)."""
    if not messages:
        raise RecordError("missing_field", "no turns")
    expected = "user"
    for i, m in enumerate(messages, 1):
        role = m["role"]
        if role not in ROLES:
            raise RecordError("unknown_role", f"unknown role {role!r} in turn {i} (known: {', '.join(ROLES)})")
        if not m["content"].strip() and not m.get("tool_calls"):
            raise RecordError("empty_content", f"empty content in turn {i} ({role})")
        if m.get("tool_calls") and role != "assistant":
            raise RecordError("turn_order", f"turn {i}: only assistant turns may carry tool calls")
        if role == "system":
            if i != 1:
                raise RecordError("turn_order", f"turn {i}: a system message may only come first")
            continue
        allowed = {"user": {"user"}, "assistant": {"assistant"}, "tool": {"tool", "assistant"}}[expected]
        if role not in allowed:
            raise RecordError("turn_order", f"turn {i}: expected {' or '.join(sorted(allowed))}, got {role}")
        if role == "user":
            expected = "assistant"
        elif role == "assistant":
            expected = "tool" if m.get("tool_calls") else "user"
        else:
            expected = "tool"  # more tool results, or the assistant's answer
    if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
        raise RecordError("turn_order", "the conversation must end with an assistant reply")


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _fill(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, text in mapping.items():
            value = value.replace(key, text)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, mapping) for v in value]
    return value


def find_placeholder(value: Any) -> str | None:
    """The first string containing '{{' or '}}', or None."""
    return next((s for s in _strings(value) if PLACEHOLDER.search(s)), None)


def _map_strings(value: Any, fn) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: _map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_strings(v, fn) for v in value]
    return value


def check_text(out: dict, control_tokens: str = "escape") -> tuple[dict, bool]:
    """(record, escaped?): lone surrogates are refused (they pass json.loads but cannot be written as UTF-8 or
    tokenized); control tokens are escaped, or refused with control_tokens='refuse'."""
    for text in _strings(out):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RecordError("encoding", f"lone surrogate {text[err.start]!r} at character {err.start} of "
                                          f"{text[max(0, err.start - 20):err.start]!r}...: not valid Unicode text")
        if control_tokens == "refuse" and find_control_token(text):
            raise RecordError("control_token", f"text spells the control token {find_control_token(text)!r} "
                                               "(pass --control_tokens escape to keep the record, escaped)")
    escaped = _map_strings(out, escape_control_tokens)
    return escaped, escaped != out


def convert_record(record: dict, fmt: str, identity: dict[str, str] | None = None,
                   system_prompt: str | None = None) -> dict:
    """One input record -> {"conversations": [...], "tools"?: [...]}, validated; raises RecordError."""
    messages = CONVERTERS[fmt](record)
    for m in messages:
        m["content"] = m["content"].strip()
    if system_prompt and messages and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    validate(messages)
    out = {"conversations": messages}
    tools = _tools(record)
    if tools:
        out["tools"] = tools
    if identity is not None:
        out = _fill(out, identity)
    leftover = find_placeholder(out)
    if leftover is not None:
        match = re.search(r"\{\{[^{}]*\}\}|\{\{|\}\}", leftover).group(0)
        hint = "only {{NAME}} and {{AUTHOR}} are filled" if identity is not None else \
            "pass identity files with --identity so {{NAME}}/{{AUTHOR}} get filled"
        raise RecordError("placeholder", f"unfilled placeholder {match!r} ({hint})")
    return out


def dedup_key(conversation: dict) -> str:
    """Exact-duplicate key: roles, whitespace-normalised contents, tool calls and tools."""
    turns = [[m["role"], " ".join(m["content"].split()), m.get("tool_calls")] for m in conversation["conversations"]]
    return json.dumps([turns, conversation.get("tools")], ensure_ascii=False, sort_keys=True)


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
    conversations: list[dict] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)

    def drop(self, reason: str, message: str | None = None) -> None:
        self.dropped[reason] += 1
        if message and len(self.examples.setdefault(reason, [])) < 3:
            self.examples[reason].append(message)


def _resolve(path: str | Path) -> Path:
    """A path as given, else relative to the repository root (scripts may run from anywhere)."""
    path = Path(path)
    if not path.exists() and not path.is_absolute() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def parse_inputs(inputs: list[str], identity: bool = False, default_repeat: int = 1) -> list[InputSpec]:
    """'path' or 'path:N' (upsample N times); a folder expands to its JSONL/JSON/CSV files, recursively, sorted."""
    specs = []
    for text in inputs:
        head, sep, tail = text.rpartition(":")
        path, repeat = (head, int(tail)) if sep and tail.isdigit() else (text, default_repeat)
        if repeat < 1:
            raise ValueError(f"{text}: the upsampling factor after ':' must be >= 1")
        resolved = _resolve(path)
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


def load_file(spec: InputSpec, cfg: DataConfig) -> FileResult:
    """Read, detect, convert and validate one file. Raises DataError on the first bad record unless skip_invalid."""
    from tqdm.auto import tqdm

    result = FileResult(spec)
    identity = {"{{NAME}}": cfg.name, "{{AUTHOR}}": cfg.author} if spec.identity else None
    result.encoding, records = iter_records(spec.path, cfg.encoding)
    for line, record in tqdm(records, desc=spec.path.name, unit=" rec", mininterval=1.0, leave=False,
                             disable=None):
        result.read += 1
        try:
            if isinstance(record, RecordError):
                raise record
            if result.format is None:
                result.format = detect_format(record)
                if result.format is None:
                    raise RecordError("unknown_format", f"cannot tell the format from keys {sorted(record)[:8]}; "
                                                        "expected ShareGPT, conversations/messages, Alpaca, "
                                                        "question/answer, HuatuoGPT 'data' or "
                                                        "department,title,ask,answer")
            conversation, escaped = check_text(convert_record(record, result.format, identity, cfg.system_prompt),
                                               cfg.control_tokens)
            result.conversations.append(conversation)
            result.escaped += escaped
        except RecordError as err:
            located = DataError(spec.path, line, err.reason, err.detail)
            if not cfg.skip_invalid:
                raise located from None
            result.drop(err.reason, str(located))
    return result


# ----------------------------------------------------------------------------------------------------------
# Token lengths, the whole pipeline, and the report.


def default_tokenizer_dir() -> Path | None:
    """model/qwen when present, else the bundled SmolLM2, else None (no length statistics)."""
    for folder in ("model/qwen", "model/smollm2-135m-instruct"):
        if (_resolve(folder) / "config.json").is_file():
            return _resolve(folder)
    return None


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


def deduplicate(results: list[FileResult]) -> None:
    """Drop exact duplicates across all inputs, keeping the first occurrence (inputs in the order given)."""
    seen: set[str] = set()
    for result in results:
        unique = []
        for conversation in result.conversations:
            key = dedup_key(conversation)
            if key in seen:
                result.drop("duplicate")
                continue
            seen.add(key)
            unique.append(conversation)
        result.conversations = unique


def sample(results: list[FileResult], max_per_input: int, seed: int) -> None:
    """Keep a seeded random sample of at most `max_per_input` conversations per file, in file order."""
    for result in results:
        n = len(result.conversations)
        if 0 < max_per_input < n:
            keep = sorted(random.Random(seed).sample(range(n), max_per_input))
            for _ in range(n - max_per_input):
                result.drop("sampled_out")
            result.conversations = [result.conversations[i] for i in keep]


def filter_lengths(results: list[FileResult], tokenizer, max_seq_len: int) -> None:
    """Count tokens per conversation (kept in `result.lengths`) and drop those over `max_seq_len` (0: none)."""
    for result in results:
        result.lengths = token_lengths(result.conversations, tokenizer)
        if max_seq_len > 0:
            keep = [n <= max_seq_len for n in result.lengths]
            for _ in range(keep.count(False)):
                result.drop("too_long")
            result.conversations = [c for c, k in zip(result.conversations, keep) if k]


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
                       "control_tokens_escaped": r.escaped,
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
        raise ValueError("nothing to prepare: give --input FILE (repeatable) and/or --identity FILE")
    paths = output_paths(cfg.output)
    if any(s.path.resolve() == paths["output"].resolve() for s in specs):
        raise ValueError(f"--output {cfg.output} is also an input; write to a new file")
    for value in (cfg.name, cfg.author):
        if PLACEHOLDER.search(value):
            raise ValueError(f"--name/--author must not contain '{{{{' or '}}}}': {value!r}")
    if paths["output"].is_dir():
        raise ValueError(f"--output {cfg.output} is a folder; give a file name, e.g. {paths['output'] / 'data.jsonl'}")
    if verbose:
        print(f"preparing data with\n{format_config(cfg)}", file=sys.stderr)

    # Read and validate everything before writing anything, so a bad file never leaves a half-written output.
    results = [load_file(spec, cfg) for spec in specs]
    if cfg.dedup:
        deduplicate(results)
    sample(results, cfg.max_per_input, cfg.seed)
    tokenizer_dir = {"auto": default_tokenizer_dir(), "none": None}.get(cfg.tokenizer.lower(), _resolve(cfg.tokenizer))
    if tokenizer_dir is not None:
        filter_lengths(results, load_tokenizer(tokenizer_dir, chat_template=cfg.chat_template), cfg.max_seq_len)
    elif cfg.max_seq_len > 0 and verbose:
        print("warning: no tokenizer (--tokenizer none, or auto found neither model/qwen nor the bundled model): "
              "no token-length statistics and no length filter", file=sys.stderr)

    merged = [c for r in results for c in r.conversations for _ in range(r.spec.repeat)]
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(merged)
    for conversation in merged:  # last line of defence: no placeholder reaches training data
        leftover = find_placeholder(conversation)
        if leftover is not None:
            raise RuntimeError(f"placeholder survived into the output: {leftover[:80]!r}")
    # The sidecars are written only after the output, each atomically: a failed run leaves the previous
    # output's config.yaml and stats.json as they were.
    jsonl.write_jsonl(merged, paths["output"])
    stats = build_stats(results, len(merged), cfg, tokenizer_dir)
    jsonl.write_text_atomic(yaml.safe_dump(config_to_dict(cfg), allow_unicode=True, sort_keys=False), paths["config"])
    jsonl.write_text_atomic(json.dumps(stats, ensure_ascii=False, indent=2), paths["stats"])
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
                     d["read"], invalid, d["duplicate"], d["sampled_out"], d["too_long"], d["kept"], f"x{d['repeat']}",
                     d["written"]])
    s = stats["summary"]
    rows.append(["**total**", "", "", s["read"], sum(sum(d["invalid"].values()) for d in stats["detail"]),
                 *(s["dropped"].get(k, 0) for k in DROP_REASONS), s["kept"], "", s["written"]])
    table = markdown_table(rows, ["input", "format", "encoding", "read", "invalid", "duplicate", "sampled out",
                                  "too long", "kept", "upsample", "written"])
    t = s["token_length"]
    if t.get("n"):
        table += "\n\n" + markdown_table([[t["n"], t["mean"], t["p50"], t["p90"], t["p95"], t["p99"], t["max"]]],
                                         ["conversations", "mean tokens", "p50", "p90", "p95", "p99", "max"])
    return table
