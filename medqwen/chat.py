"""The one chat template (template/qwen_chat_template.jinja) and the tokenizer that carries it.

Training, inference, evaluation and vLLM all render conversations through `load_tokenizer`, so a model is
served with exactly the prompt format it was trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medqwen.configlib import DEFAULT_TEMPLATE, REPO_ROOT

Message = dict[str, Any]


def template_path(path: str | Path = DEFAULT_TEMPLATE) -> Path:
    """Resolve a template path relative to the working directory, then to the repository root."""
    path = Path(path)
    if not path.is_absolute() and not path.is_file():
        path = REPO_ROOT / path
    if not path.is_file():
        raise FileNotFoundError(f"chat template {path} not found (the repository ships {DEFAULT_TEMPLATE})")
    return path


def load_chat_template(path: str | Path = DEFAULT_TEMPLATE) -> str:
    """The Jinja source of a chat template file."""
    return template_path(path).read_text(encoding="utf-8")


def load_tokenizer(model_path: str | Path, chat_template: str | Path | None = DEFAULT_TEMPLATE):
    """AutoTokenizer for a model folder with our chat template installed and a pad token set."""
    from transformers import AutoTokenizer

    from medqwen.modeling import check_model_dir

    check_model_dir(model_path)
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
