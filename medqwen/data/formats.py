"""Converting one record of any known layout into OpenAI-shaped messages, validating them, and the escapes
applied to the text (identity placeholders, control tokens, lone surrogates)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from medqwen.chat import escape_value, find_control_token
from medqwen.data.readers import RecordError

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bot": "assistant", "model": "assistant", "function_call": "assistant",
    "observation": "tool", "tool": "tool", "function": "tool",
}
# Question/answer key pairs, tried in this order; a pair is used only when both keys are present.
QA_KEYS = [("问", "答"), ("问题", "回答"), ("question", "answer"), ("questions", "answers"), ("query", "response"),
           ("query", "answer"), ("question", "response"), ("prompt", "response"), ("prompt", "completion"),
           ("input", "output")]
TURN_LIST_KEYS = ("conversations", "messages", "conversation")  # DISC-Med-SFT names its list `conversation`
PLACEHOLDER = re.compile(r"\{\{|\}\}")  # in identity files, any brace pair left after filling is a typo
# elsewhere only a named placeholder is: JSON in ordinary text (a tool call's arguments) ends in '}}'
NAMED_PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][A-Za-z0-9_]*\s*\}\}")
# C0 control characters other than tab, newline and carriage return: a NUL in training text is corruption
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# ChatMed's published test examples wrap the question in its prompt: "<s>问：\n...\n答：\n"
CHATMED_PROMPT = re.compile(r"^\s*(?:<s>)?\s*问[：:]\s*(.*?)\s*答[：:]\s*$", re.S)

LAYOUTS = ("ShareGPT (conversations of from/value), OpenAI messages (conversations/messages/conversation of "
           "role/content), Alpaca (instruction/input/output), question/answer pairs ("
           + ", ".join(f"{q}/{a}" for q, a in QA_KEYS) + "), HuatuoGPT data lists, department CSVs "
           "(department,title,ask,answer), cMedQA answer.csv (ans_id,question_id,content)")


def layout_help(keys: list[str]) -> str:
    """One message for a file whose layout is not recognised: the keys seen, the layouts accepted, the way out."""
    return (f"cannot tell the layout from the keys {keys[:12]}; accepted: {LAYOUTS}. For another layout, map its "
            "fields with --columns (e.g. --columns question=medical_case,answer=doctor_diagnosis) and its role "
            "names with --roles (e.g. --roles patient=user,doctor=assistant); see docs/data.md")


# ----------------------------------------------------------------------------------------------------------
# A field/role mapping for layouts nobody can list (LLaMA-Factory's dataset `columns`/`tags` idea).


@dataclass
class Mapping:
    """`columns`: our field name -> the file's (dotted paths reach into nested objects); `roles`: the file's role
    name -> ours (user, assistant, system, tool)."""

    columns: dict[str, str] = field(default_factory=dict)
    roles: dict[str, str] = field(default_factory=dict)


COLUMN_TARGETS = ("question", "answer", "system", "history", "instruction", "input", "output", "messages", "role",
                  "content", "title")


def _pairs(text: str | None, what: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        left, sep, right = item.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise ValueError(f"--{what} {text!r}: expected name=name pairs separated by commas, got {item!r}")
        out[left.strip().lower()] = right.strip()
    return out


def parse_mapping(columns: str | None, roles: str | None) -> Mapping:
    """`--columns question=medical_case,answer=doctor_diagnosis` and `--roles patient=user,doctor=assistant`."""
    mapping = Mapping(_pairs(columns, "columns"), _pairs(roles, "roles"))
    unknown = sorted(set(mapping.columns) - set(COLUMN_TARGETS))
    if unknown:
        raise ValueError(f"--columns: unknown target(s) {unknown}; map any of {', '.join(COLUMN_TARGETS)}")
    bad_roles = {k: v for k, v in mapping.roles.items() if v.lower() not in ROLES}
    if bad_roles:
        raise ValueError(f"--roles: {bad_roles} map to unknown roles; use {', '.join(ROLES)}")
    mapping.roles = {k: v.lower() for k, v in mapping.roles.items()}
    return mapping


def _lower_keys(value: Any) -> Any:
    """Key names in any casing (`Question`, `ANSWER`, `From`): records and their turns with lower-case keys."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = key.lower() if isinstance(key, str) else key
        if isinstance(item, list) and name in TURN_LIST_KEYS + ("messages",):
            item = [_lower_keys(turn) for turn in item]
        out.setdefault(name, item)  # the first spelling wins when a record repeats a key in two casings
    return out


def _lookup(record: dict, path: str) -> Any:
    value: Any = record
    for part in path.lower().split("."):
        if not isinstance(value, dict):
            return None
        value = next((v for k, v in value.items() if isinstance(k, str) and k.lower() == part), None)
    return value


def normalise(record: dict, mapping: Mapping | None = None) -> dict:
    """Lower-case keys, then the user's mapping: mapped fields renamed to ours, mapped turn keys and role names."""
    record = _lower_keys(record)
    if mapping is None or not (mapping.columns or mapping.roles):
        return record
    columns = dict(mapping.columns)
    role_key, content_key = columns.pop("role", None), columns.pop("content", None)
    for ours, theirs in columns.items():
        value = _lookup(record, theirs)
        if value is not None:
            record[ours] = [_lower_keys(t) for t in value] if ours == "messages" and isinstance(value, list) else value
    key = next((k for k in ("messages",) + TURN_LIST_KEYS if isinstance(record.get(k), list)), None)
    if key is not None and (role_key or content_key or mapping.roles):
        turns = []
        for turn in record[key]:
            if isinstance(turn, dict):
                turn = dict(turn)
                if role_key and role_key.lower() in turn:
                    turn["role"] = turn[role_key.lower()]
                if content_key and content_key.lower() in turn:
                    turn["content"] = turn[content_key.lower()]
                for name in ("role", "from"):
                    if isinstance(turn.get(name), str) and turn[name].strip().lower() in mapping.roles:
                        turn[name] = mapping.roles[turn[name].strip().lower()]
            turns.append(turn)
        record[key] = turns
    return record


# ----------------------------------------------------------------------------------------------------------
# Converting one record (any format) to a list of OpenAI-shaped messages.


def _turn_list(record: dict) -> tuple[str, list] | None:
    for key in TURN_LIST_KEYS:
        turns = record.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            return key, turns
    return None


def qa_pair(record: dict) -> tuple[str, str] | None:
    """The first question/answer key pair whose two keys are both present."""
    return next(((q, a) for q, a in QA_KEYS if q in record and a in record), None)


def detect_format(record: dict) -> str | None:
    """The format name of one record (keys already lower-cased), from its keys; None when no format fits."""
    found = _turn_list(record)
    if found:
        first = found[1][0]
        if "from" in first or "value" in first:
            return "sharegpt"
        if "role" in first or "content" in first:
            return "messages"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if isinstance(record.get("data"), list) and all(isinstance(t, str) for t in record["data"]):
        return "huatuo"
    if "ask" in record and "answer" in record:
        return "department_csv"
    if {"ans_id", "question_id", "content"} <= set(record):
        return "cmedqa_answer"
    if set(record) == {"question_id", "content"}:
        return "cmedqa_question"
    if qa_pair(record):
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


def required_text(record: dict, key: str, where: str = "") -> str:
    """A required text field of a record (missing or null: a `missing_field` record error)."""
    if key not in record or record[key] is None:
        raise RecordError("missing_field", f"missing field '{key}'{where}")
    return as_text(record[key], f"field '{key}'{where}")


def _turns(record: dict) -> list:
    turns = next((record[k] for k in TURN_LIST_KEYS if k in record), None)
    if not isinstance(turns, list):
        raise RecordError("missing_field", "missing list field 'conversations' (or 'messages', 'conversation')")
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
    messages = [{"role": "system", "content": required_text(record, "system")}] if record.get("system") else []
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
            messages.append({"role": SHAREGPT_ROLES[speaker], "content": required_text(turn, "value", f" in turn {i}")})
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
    messages = [{"role": "system", "content": required_text(record, "system")}] if record.get("system") else []
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
    messages = [{"role": "system", "content": required_text(record, "system")}] if record.get("system") else []
    for i, pair in enumerate(record.get("history") or [], 1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RecordError("missing_field", f"history item {i} must be a [question, answer] pair")
        messages += [{"role": "user", "content": as_text(pair[0], f"history item {i} question")},
                     {"role": "assistant", "content": as_text(pair[1], f"history item {i} answer")}]
    instruction = required_text(record, "instruction")
    extra = "" if record.get("input") in (None, "") else as_text(record["input"], "field 'input'")
    prompt = f"{instruction}\n{extra}" if extra.strip() else instruction
    answer = required_text(record, "output")
    return messages + [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def _one_text(record: dict, key: str) -> str:
    """A QA field; Huatuo-26M's encyclopedia files hold lists (several phrasings of one question): the first."""
    value = record.get(key)
    while key in ("questions", "answers") and isinstance(value, list) and value:
        value = value[0]
    return required_text({key: value}, key)


def from_qa(record: dict) -> list[dict]:
    pair = qa_pair(record)
    if pair is None:
        half = next(((q, a) for q, a in QA_KEYS if q in record or a in record), None)
        if half is None:
            raise RecordError("missing_field", f"missing question/answer fields (a pair of {QA_KEYS}); this record "
                                               f"has {sorted(record)[:8]}")
        missing, present = (half[1], half[0]) if half[0] in record else half
        raise RecordError("missing_field", f"missing field '{missing}' (the pair of '{present}')")
    question = _one_text(record, pair[0])
    wrapped = CHATMED_PROMPT.match(question)
    return [{"role": "user", "content": wrapped.group(1) if wrapped else question},
            {"role": "assistant", "content": _one_text(record, pair[1])}]


def from_cmedqa_answer(record: dict) -> list[dict]:
    """cMedQA answer.csv rows, with the question text joined in from question.csv (`question` set by the caller)."""
    question = required_text(record, "question", " (no row of question.csv has this question_id)")
    return [{"role": "user", "content": question}, {"role": "assistant", "content": required_text(record, "content")}]


def from_huatuo(record: dict) -> list[dict]:
    """HuatuoGPT-sft-data-v1: `data` alternates '问：...' and '答：...' strings."""
    turns = record.get("data")
    if not isinstance(turns, list):
        raise RecordError("missing_field", "missing list field 'data'")
    return [{"role": ("user", "assistant")[i % 2],
             "content": re.sub(r"^\s*[问答][：:]", "", as_text(text, f"data[{i}]"))} for i, text in enumerate(turns)]


def from_department_csv(record: dict) -> list[dict]:
    """Chinese medical dialogue CSVs: the patient's title is a summary, `ask` the details ('无' when none)."""
    title = "" if record.get("title") is None else as_text(record["title"], "field 'title'").strip()
    ask = required_text(record, "ask").strip()
    if ask in ("", "无") or ask.startswith(title):
        question = ask if ask not in ("", "无") else title
    else:
        question = f"{title}\n{ask}" if title else ask
    return [{"role": "user", "content": question}, {"role": "assistant", "content": required_text(record, "answer")}]


CONVERTERS = {"sharegpt": from_sharegpt, "messages": from_messages, "alpaca": from_alpaca, "qa": from_qa,
              "huatuo": from_huatuo, "department_csv": from_department_csv, "cmedqa_answer": from_cmedqa_answer}


def validate(messages: list[dict]) -> None:
    """Roles known; optional system first, then user/assistant alternating, tool results only after an assistant
    turn; no empty content; ends with an assistant reply (the part that is trained). A tool result may follow an
    assistant turn without a structured call: real tool-call sets write some calls as prose (`AI 计算折扣: {...}`)
    and LLaMA-Factory's ShareGPT reader lets an observation take the user's place, so such records train."""
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
        allowed = {"user": {"user"}, "assistant": {"assistant"}, "tool": {"tool", "assistant"},
                   "user or tool": {"user", "tool"}}[expected]
        if role not in allowed:
            raise RecordError("turn_order", f"turn {i}: expected {' or '.join(sorted(allowed))}, got {role}")
        if role == "user":
            expected = "assistant"
        elif role == "assistant":
            expected = "tool" if m.get("tool_calls") else "user or tool"
        else:
            expected = "tool"  # more tool results, or the assistant's answer
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("no_answer", "no assistant reply: nothing to learn from this record")
    if messages[-1]["role"] != "assistant" or messages[-1].get("tool_calls"):
        raise RecordError("turn_order", "the conversation must end with an assistant reply")


def _strings(value: Any) -> Iterator[str]:
    """Every string in a record: values and dict keys (tool-call arguments and tool schemas are rendered with
    their keys, so a key can carry a control token as well as a value)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
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


def find_placeholder(value: Any, strict: bool = True) -> str | None:
    """The first string containing '{{' or '}}' (strict) or a `{{NAME}}`-like placeholder, or None."""
    pattern = PLACEHOLDER if strict else NAMED_PLACEHOLDER
    return next((s for s in _strings(value) if pattern.search(s)), None)


def check_text(out: dict, control_tokens: str = "escape") -> tuple[dict, bool]:
    """(record, escaped?): lone surrogates are refused (they pass json.loads but cannot be written as UTF-8 or
    tokenized); control tokens are escaped, or refused with control_tokens='refuse'."""
    for text in _strings(out):
        control = CONTROL_CHARS.search(text)
        if control:
            raise RecordError("bad_value", f"control character U+{ord(control.group()):04X} at character "
                                           f"{control.start()}: not text (a binary or mis-decoded file?)")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RecordError("encoding", f"lone surrogate {text[err.start]!r} at character {err.start} of "
                                          f"{text[max(0, err.start - 20):err.start]!r}...: not valid Unicode text")
        if control_tokens == "refuse" and find_control_token(text):
            raise RecordError("control_token", f"text spells the control token {find_control_token(text)!r} "
                                               "(pass --control_tokens escape to keep the record, escaped)")
    escaped = escape_value(out)
    return escaped, escaped != out


def convert_record(record: dict, fmt: str, identity: dict[str, str] | None = None,
                   system_prompt: str | None = None, notes: dict[str, int] | None = None) -> dict:
    """One input record -> {"conversations": [...], "tools"?: [...]}, validated; raises RecordError.

    User turns left unanswered at the end (a chat log's last "继续") are cut, the answered turns before them kept,
    and counted in `notes["unanswered_turns_trimmed"]`."""
    messages = CONVERTERS[fmt](record)
    for m in messages:
        m["content"] = m["content"].strip()
    trimmed = 0
    while len(messages) > 1 and messages[-1]["role"] == "user" and any(m["role"] == "assistant" for m in messages):
        messages.pop()
        trimmed += 1
    if trimmed and notes is not None:
        notes["unanswered_turns_trimmed"] = notes.get("unanswered_turns_trimmed", 0) + trimmed
    if system_prompt and messages and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system_prompt})
    validate(messages)
    out = {"conversations": messages}
    tools = _tools(record)
    if tools:
        out["tools"] = tools
    if identity is not None:
        out = _fill(out, identity)
    leftover = find_placeholder(out, strict=identity is not None)
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
