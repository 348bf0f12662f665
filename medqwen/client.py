"""The one client for OpenAI-compatible model servers: builds it, escapes every message it sends, redacts its errors.

    client = openai_client(base_url, api_key, timeout_s=60)          # key fallback "EMPTY" for local servers
    reply = create_chat(client, model="lora-adapter", messages=msgs)  # every message escaped on the way out
    kind, text = describe_error(err, secrets=[api_key])               # ("http_500", "...Bearer ***...")

Every stage that talks to a model server (agent, web page, RAG, judge, evaluation, exam backends) goes through
here, so control-token escaping, the key fallback and error redaction are not left to each new call site.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from medqwen.chat import escape_value
from medqwen.configlib import UserError
from medqwen.safe_http import public_text, public_url

KEY_PLACEHOLDER = "EMPTY"  # local servers (vLLM) accept any key; the OpenAI client insists on a non-empty one
ROLES = ("system", "user", "assistant", "tool", "developer")


class ServerReplyError(UserError, RuntimeError):
    """A reply that is not a complete OpenAI chat completion (cut stream, HTML page, no choices)."""


def api_key_or_placeholder(api_key: str | None) -> str:
    return api_key or KEY_PLACEHOLDER


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The Authorization header for a raw HTTP request to the server (the exam backends, the /models check)."""
    return {"Authorization": f"Bearer {api_key_or_placeholder(api_key)}"}


def openai_client(base_url: str, api_key: str | None = None, *, timeout_s: float, max_retries: int = 0):
    """An `openai.OpenAI` for `base_url`; max_retries=0 by default so a server that is down says so now."""
    from openai import OpenAI

    return OpenAI(base_url=base_url, api_key=api_key_or_placeholder(api_key), timeout=timeout_s,
                  max_retries=max_retries)


def chat_model(base_url: str, model: str, api_key: str | None = None, *, timeout_s: float, max_retries: int = 1,
               **sampling: Any):
    """A LangChain `ChatOpenAI` for the agent; its messages are escaped by escape_messages in the agent's
    middleware (LangChain builds the request, so the escaping happens on the message objects)."""
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base_url, model=model, api_key=api_key_or_placeholder(api_key), timeout=timeout_s,
                      max_retries=max_retries, **sampling)


def escape_message(message: Any) -> Any:
    """One chat message (an OpenAI dict or a LangChain message) with every text it carries escaped: content,
    content parts, tool-call names and arguments, names. A message cannot open or close a turn."""
    if isinstance(message, dict):
        role = message.get("role")
        if role not in ROLES:
            raise ValueError(f"unknown chat role {public_text(repr(role), limit=40)}; use one of {list(ROLES)}")
        return {key: escape_value(value) if key != "role" else value for key, value in message.items()}
    update: dict[str, Any] = {}
    if isinstance(getattr(message, "content", None), (str, list)):
        update["content"] = escape_value(message.content)
    if getattr(message, "tool_calls", None):
        update["tool_calls"] = [{**call, "name": escape_value(call.get("name")), "args": escape_value(call.get("args"))}
                                for call in message.tool_calls]
    return message.model_copy(update=update) if update else message


def escape_messages(messages: Iterable[Any]) -> list:
    """Every message escaped (see escape_message): the one place text from users, documents, tools, histories
    and the model's own earlier replies is neutralised before a server renders it into a prompt."""
    return [escape_message(m) for m in messages]


def create_chat(client, *, model: str, messages: Iterable[Any], **options: Any):
    """`client.chat.completions.create` with every message escaped (also for stream=True)."""
    return client.chat.completions.create(model=model, messages=escape_messages(messages), **options)


def stream_chat(client, *, model: str, messages: Iterable[Any], **options: Any) -> Iterator[str]:
    """The reply so far, growing as the server streams it; ServerReplyError when the stream ends without a
    finish_reason (the server died mid-reply) or holds no reply at all (an HTML page, broken JSON)."""
    text, finished, chunks = "", False, 0
    for chunk in create_chat(client, model=model, messages=messages, stream=True, **options):
        choices = getattr(chunk, "choices", None)
        if not choices:
            continue
        chunks += 1
        delta = getattr(choices[0], "delta", None)
        if delta is not None and getattr(delta, "content", None):
            text += delta.content
            yield text
        finished = finished or bool(getattr(choices[0], "finish_reason", None))
    if not finished:
        raise ServerReplyError("the reply was cut: the stream ended without a finish reason (did the server stop?)"
                               if chunks else "the server sent no chat completion (an HTML page or broken JSON?)")


def describe_error(err: BaseException, secrets: Iterable[str | None] = (), limit: int = 300) -> tuple[str, str]:
    """(kind, message) for an error of a model-server call, the message redacted then clipped. kind: timeout,
    connection, http_<status>, malformed (a reply that is not a chat completion) or the exception's name."""
    import openai

    secrets = list(secrets)
    if isinstance(err, openai.APITimeoutError):
        return "timeout", "no reply within the time limit"
    if isinstance(err, openai.APIConnectionError):
        return "connection", f"{type(err).__name__}: {public_text(err, secrets, limit)}"
    if isinstance(err, openai.APIStatusError):
        return f"http_{err.status_code}", public_text(err, secrets, limit)
    if isinstance(err, (openai.APIResponseValidationError, ServerReplyError, ValueError, KeyError, IndexError,
                        TypeError, AttributeError)):
        return "malformed", f"{type(err).__name__}: {public_text(err, secrets, limit)}"
    return type(err).__name__, public_text(err, secrets, limit)


def server_label(base_url: str) -> str:
    """The server's URL as messages show it (no userinfo, no credential parameters)."""
    return public_url(base_url)
