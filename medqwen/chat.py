"""The one chat template (template/qwen_chat_template.jinja) and the tokenizer that carries it.

Training, inference, evaluation and vLLM all render conversations through `load_tokenizer`, so a model is
served with exactly the prompt format it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medqwen.configlib import DEFAULT_TEMPLATE, repo_path

Message = dict[str, Any]


def template_path(path: str | Path = DEFAULT_TEMPLATE) -> Path:
    """Resolve a template path relative to the working directory, then to the repository root."""
    path = repo_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"chat template {path} not found (the repository ships {DEFAULT_TEMPLATE})")
    return path


def load_chat_template(path: str | Path = DEFAULT_TEMPLATE) -> str:
    """The Jinja source of a chat template file."""
    return template_path(path).read_text(encoding="utf-8")


def load_tokenizer(model_path: str | Path, chat_template: str | Path | None = DEFAULT_TEMPLATE):
    """AutoTokenizer for a model folder with our chat template installed and a pad token set."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if chat_template is not None:
        tokenizer.chat_template = load_chat_template(chat_template)
    if tokenizer.pad_token is None:
        # Qwen pads with <|endoftext|>; never pad with <|im_end|>, which the model must learn to emit.
        pad = "<|endoftext|>" if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token
        tokenizer.pad_token = pad
    return tokenizer


def render(tokenizer, messages: list[Message], tools: list[dict] | None = None,
           add_generation_prompt: bool = False, enable_thinking: bool | None = None) -> str:
    """Render a conversation to text with the tokenizer's chat template."""
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=add_generation_prompt, **kwargs)


def encode_with_assistant_mask(tokenizer, messages: list[Message], tools: list[dict] | None = None,
                               enable_thinking: bool | None = None) -> tuple[list[int], list[int]]:
    """Token ids and a 0/1 mask that is 1 exactly on assistant replies (content, tool calls, <|im_end|>).

    Uses transformers' `{% generation %}` support, the same path TRL's `assistant_only_loss=True` takes.
    """
    kwargs = {} if enable_thinking is None else {"enable_thinking": enable_thinking}
    out = tokenizer.apply_chat_template(messages, tools=tools, tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, **kwargs)
    return list(out["input_ids"]), list(out["assistant_masks"])


# ----------------------------------------------------------------------------------------------------------
# Untrusted text (retrieved passages, tool results, user input, training data) before templating.

# Qwen3's added tokens (tokenizer_config.json `added_tokens_decoder`; a test checks the list against it). Any
# `<|name|>` is escaped too, so other families' control tokens (SmolLM2's <|im_start|>, Llama's <|eot_id|>) are
# covered without listing them.
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                  "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
                  "<tool_response>", "</tool_response>", "<think>", "</think>")
ESCAPE_MARK = "\u200b"  # zero-width space after '<': the text reads the same, no tokenizer matches the token


def control_token_pattern(tokenizer=None):
    """A regex matching the control tokens: CONTROL_TOKENS, any `<|...|>`, and `tokenizer`'s special/added tokens."""
    import re

    tokens = set(CONTROL_TOKENS)
    if tokenizer is not None:
        tokens |= {t for t in getattr(tokenizer, "all_special_tokens", []) if t.startswith("<")}
        tokens |= {getattr(t, "content", str(t)) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()}
    literal = "|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True) if t.startswith("<"))
    return re.compile(rf"{literal}|<\|[^<>|\s]{{1,40}}\|>", re.IGNORECASE)


_CONTROL = control_token_pattern()


def find_control_token(text: str, pattern=None) -> str | None:
    """The first control token in `text`, or None."""
    match = (pattern or _CONTROL).search(text)
    return match.group(0) if match else None


def escape_control_tokens(text: str, pattern=None) -> str:
    """`text` with every control token neutralised (a zero-width space after its '<'), so text from documents,
    tools, users or datasets can never open, close or forge a turn, a tool call or a thinking block.
    Idempotent: escaped text contains no control token."""
    if not isinstance(text, str) or "<" not in text:
        return text
    return (pattern or _CONTROL).sub(lambda m: "<" + ESCAPE_MARK + m.group(0)[1:], text)


def escape_value(value: Any) -> Any:
    """Strings, and the keys and values of dicts and lists inside, with control tokens escaped: a JSON value
    (tool-call arguments, tool schemas, a training record) whose keys are rendered as well as its values."""
    if isinstance(value, str):
        return escape_control_tokens(value)
    if isinstance(value, dict):
        return {escape_value(k): escape_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [escape_value(v) for v in value]
    return value
