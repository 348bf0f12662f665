"""The tool-calling agent: LangChain 1.x `create_agent` over an OpenAI-compatible server (vLLM), with the tools
of medqwen/agent/tools.py.

    cfg = AgentConfig(base_url="http://localhost:8001/v1", model="lora-adapter")
    check_server(cfg)                                   # clear error when the server is down
    agent = build_agent(cfg)                            # build_agent(cfg, extra_tools=[my_tool]) adds tools
    history = ask(agent, cfg, [], "帮我计算 (12 + 8) * 3")  # streams the answer, returns the new history

More tools: add them to the list in `build_tools` (the one place the agent's and the tool-data generator's
tool list comes from), or pass `extra_tools=` to `build_agent` (e.g. a RAG `search_knowledge_base` tool).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Sequence

from pydantic import BaseModel, Field

from medqwen.agent.config import AgentConfig
from medqwen.agent.tools import MAX_EXPRESSION_CHARS, calculate, get_current_time, get_weather
from medqwen.chat import escape_control_tokens
from medqwen.client import auth_headers, chat_model, escape_messages, server_label
from medqwen.configlib import UserError
from medqwen.safe_http import HttpError, check_url, http_get, public_text

DEFAULT_SYSTEM_PROMPT = ("You are a helpful assistant. When a question needs arithmetic, the weather or the current "
                         "time, call the matching tool and answer from its result; otherwise answer directly. "
                         "Reply in the language of the question.")


class AgentServerError(UserError, RuntimeError):
    """The model server is unreachable, too slow, or does not serve the configured model."""


class StepLimit(RuntimeError):
    """Raised by the middleware instead of a model turn beyond cfg.max_steps."""


# ----------------------------------------------------------------------------------------------------------
# Tools: argument schemas are what the model sees (JSON schema), so their descriptions are part of the prompt.


class CalculatorArgs(BaseModel):
    expression: str = Field(description="Arithmetic expression with numbers, + - * / // % ** and parentheses, "
                                        "e.g. '(12 + 8) * 3' or 'sqrt(2) * 10'", max_length=MAX_EXPRESSION_CHARS)


class WeatherArgs(BaseModel):
    city: str = Field(description="City name in Chinese or English, e.g. '北京' or 'London'")
    when: str = Field(default="now", description="'now' for current weather, 'tomorrow' (明天) or "
                                                 "'day after tomorrow' (后天) for a forecast")


class TimeArgs(BaseModel):
    timezone: str = Field(default="Asia/Shanghai", description="IANA timezone such as 'Asia/Shanghai', "
                                                               "or a city such as '纽约' or 'London'")


def build_tools(cfg: AgentConfig) -> list:
    """The agent's default tools, bound to the config (weather service URL, units, timeouts)."""
    from langchain_core.tools import StructuredTool

    def weather(city: str, when: str = "now") -> str:
        # The key is read at call time (config, else environment) and never logged or saved.
        api_key = cfg.openweather_api_key or os.environ.get("OPENWEATHER_API_KEY")
        return get_weather(city, when, cfg.weather_units, api_key=api_key, base_url=cfg.weather_base_url,
                           timeout_s=cfg.weather_timeout_s)

    return [
        StructuredTool.from_function(calculate, name="calculator", args_schema=CalculatorArgs,
                                     description="Evaluate an arithmetic expression exactly and return its value."),
        StructuredTool.from_function(weather, name="get_weather", args_schema=WeatherArgs,
                                     description="Current weather or the forecast for a city (OpenWeatherMap)."),
        StructuredTool.from_function(lambda timezone="Asia/Shanghai": get_current_time(timezone),
                                     name="get_current_time", args_schema=TimeArgs,
                                     description="Current date, time and weekday in a timezone or city."),
    ]


def openai_tool_schemas(tools: Sequence, strict: bool = True) -> list[dict]:
    """The tool list exactly as ChatOpenAI.bind_tools sends it (and the chat template renders it)."""
    from langchain_core.utils.function_calling import convert_to_openai_tool

    return [convert_to_openai_tool(t, strict=strict) for t in tools]


# ----------------------------------------------------------------------------------------------------------
# Agent


INVALID_ARGS = "__invalid_json_arguments__"  # marks a tool call whose arguments the server could not parse


def _with_invalid_calls_as_errors(message):
    """The model's message with its unparseable tool calls (`invalid_tool_calls`: arguments that are not JSON)
    turned into ordinary calls that carry the raw text under INVALID_ARGS, so the tool step answers each with an
    error the model can read and correct, instead of the turn ending silently with an empty answer."""
    invalid = getattr(message, "invalid_tool_calls", None) or []
    if not invalid:
        return message
    calls = list(message.tool_calls) + [
        {"name": call.get("name") or "unknown_tool", "args": {INVALID_ARGS: str(call.get("args") or "")[:200]},
         "id": call.get("id") or f"invalid_{n}", "type": "tool_call"} for n, call in enumerate(invalid)]
    return message.model_copy(update={"tool_calls": calls, "invalid_tool_calls": []})


CUT_ARGS = "__arguments_cut_at_max_tokens__"  # marks a tool call whose reply ended at max_tokens inside it


def _with_cut_call_marked(message):
    """The model's message with its last tool call marked CUT_ARGS when the reply stopped at max_tokens
    (finish_reason 'length'): generation ended inside that call, so its arguments are a prefix. vLLM streams the
    prefix (`{"expressi`) and the stream's partial-JSON parser reads it as {}, which would otherwise run the tool
    with arguments the model never finished (or fail with a schema error that hides the cause)."""
    if message.response_metadata.get("finish_reason") != "length" or not message.tool_calls:
        return message
    *complete, last = message.tool_calls
    cut = {**last, "args": {CUT_ARGS: json.dumps(last.get("args") or {}, ensure_ascii=False)[:200]}}
    return message.model_copy(update={"tool_calls": [*complete, cut]})


def _tool_settings_middleware(cfg: AgentConfig):
    """Middleware: strict tool schemas; `force_tool` on the first model turn of each question only (a forced
    choice on every turn would loop forever); tool calls with non-JSON arguments and calls beyond
    cfg.max_tool_calls in one turn are answered with an error; any exception a tool raises goes back to the
    model as text; every tool result has its control tokens escaped before it reaches the prompt."""
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    force_tool, strict = cfg.force_tool, cfg.strict_tools

    def error(request, text: str) -> ToolMessage:
        return ToolMessage(content=text, status="error", tool_call_id=request.tool_call["id"],
                           name=request.tool_call["name"])

    class ToolSettings(AgentMiddleware):
        def wrap_model_call(self, request, handler):
            settings = {**request.model_settings, **({"strict": True} if strict else {})}
            last_human = max((i for i, m in enumerate(request.messages) if isinstance(m, HumanMessage)), default=-1)
            first_turn = not any(isinstance(m, AIMessage) for m in request.messages[last_human + 1:])
            choice = {"type": "function", "function": {"name": force_tool}} if force_tool and first_turn else None
            if sum(isinstance(m, AIMessage) for m in request.messages[last_human + 1:]) >= cfg.max_steps:
                raise StepLimit(cfg.max_steps)
            # Every message the server will render is escaped here, the model's own earlier replies included.
            response = handler(request.override(messages=escape_messages(request.messages), model_settings=settings,
                                                tool_choice=choice or request.tool_choice))
            response.result = [_with_cut_call_marked(_with_invalid_calls_as_errors(m)) if isinstance(m, AIMessage)
                               else m for m in response.result]
            if not any(isinstance(m, AIMessage) and (_text(m.content).strip() or m.tool_calls)
                       for m in response.result):  # e.g. a stream whose chunks carry no choices
                raise AgentServerError(f"the server at VLLM_BASE_URL={server_label(cfg.base_url)} sent an empty "
                                       "reply (no text, no tool call); check the server log and try again")
            if any(isinstance(m, AIMessage) and m.response_metadata.get("model_provider") == "openai"
                   and not m.response_metadata.get("finish_reason") for m in response.result):
                # An OpenAI stream always ends with a finish_reason; without one the connection was cut mid-reply.
                raise AgentServerError(f"the connection to VLLM_BASE_URL={server_label(cfg.base_url)} broke in the "
                                       "middle of a reply (no finish_reason); is the server still running?")
            return response

        def wrap_tool_call(self, request, handler):
            call = request.tool_call
            if INVALID_ARGS in (call.get("args") or {}):
                return error(request, f"Error: the arguments of {call['name']} are not valid JSON "
                                      f"({escape_control_tokens(call['args'][INVALID_ARGS][:80])!r}); call it again "
                                      "with a JSON object that matches the tool's schema.")
            if CUT_ARGS in (call.get("args") or {}):
                return error(request, f"Error: the reply reached max_tokens={cfg.max_tokens} while writing the "
                                      f"arguments of {call['name']}, so they are cut off and the call was not run; "
                                      "call it again with shorter arguments (users: raise --max_tokens).")
            turn = next((m for m in reversed(_messages(request.state)) if isinstance(m, AIMessage)), None)
            ids = [c["id"] for c in getattr(turn, "tool_calls", [])]
            if call["id"] in ids and ids.index(call["id"]) >= cfg.max_tool_calls:
                return error(request, f"Error: refused: at most {cfg.max_tool_calls} tool calls per turn "
                                      f"(max_tool_calls); this reply made {len(ids)}. Use the results you have.")
            try:
                result = handler(request)
            except Exception as err:  # noqa: BLE001 -- the model reads the error and may retry; the agent lives on
                text = f"Error: {type(err).__name__}: {public_text(err, limit=500)}"
                return error(request, escape_control_tokens(text))
            if isinstance(result, ToolMessage) and isinstance(result.content, str):
                result.content = escape_control_tokens(result.content)
            return result

    return ToolSettings()


def _messages(state) -> list:
    return (state.get("messages") if isinstance(state, dict) else getattr(state, "messages", None)) or []


def build_agent(cfg: AgentConfig, extra_tools: Sequence = (), llm=None):
    """A LangGraph agent: ChatOpenAI on cfg.base_url/cfg.served_model (or `llm`), default tools + `extra_tools`."""
    from langchain.agents import create_agent

    if llm is None:
        server_url(cfg)
        llm = chat_model(cfg.base_url, cfg.served_model, cfg.api_key, timeout_s=cfg.timeout_s, max_retries=1,
                         temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens)
    from medqwen.rag.answer import knowledge_base_tools  # [] unless a store from agent/embedding.py exists

    tools = build_tools(cfg) + knowledge_base_tools() + list(extra_tools)
    names = [t.name for t in tools]
    if cfg.force_tool and cfg.force_tool not in names:
        raise ValueError(f"force_tool '{cfg.force_tool}' is not one of the tools {names}")
    return create_agent(llm, tools, system_prompt=cfg.system_prompt or DEFAULT_SYSTEM_PROMPT,
                        middleware=[_tool_settings_middleware(cfg)])


def server_url(cfg: AgentConfig) -> str:
    """cfg.base_url when it is a usable http(s) URL, else AgentServerError saying what to set."""
    try:
        return check_url(cfg.base_url, "VLLM_BASE_URL", require_https=False)
    except HttpError as err:
        raise AgentServerError(f"{err}; set VLLM_BASE_URL (or --base_url) to e.g. http://localhost:8001/v1") \
            from None


def served_models(cfg: AgentConfig, timeout_s: float = 5.0) -> list[str]:
    """The model names the server lists at /models; AgentServerError naming VLLM_BASE_URL when it is down."""
    url = server_label(server_url(cfg))
    try:
        response = http_get(cfg.base_url.rstrip("/") + "/models", headers=auth_headers(cfg.api_key),
                            timeout_s=timeout_s, max_bytes=10_000_000, secrets=[cfg.api_key])
        if response.status != 200:
            raise HttpError("status", f"HTTP {response.status} {response.reason}")
        served = [str(m["id"]) for m in response.json()["data"]]
    except (HttpError, ValueError, KeyError, TypeError, RecursionError) as err:  # RecursionError: deep JSON
        raise AgentServerError(
            f"no OpenAI-compatible server answers at VLLM_BASE_URL={url} "
            f"({type(err).__name__}: {public_text(err, [cfg.api_key], 200)}).\n"
            "Start it with `bash agent/serve_vllm.sh`, or point VLLM_BASE_URL (or --base_url) at your "
            "server.") from None
    return served


def check_server(cfg: AgentConfig, timeout_s: float = 5.0) -> list[str]:
    """The served model names; AgentServerError naming VLLM_BASE_URL when the server is down or lacks the model."""
    served = served_models(cfg, timeout_s)
    url = server_label(server_url(cfg))
    if cfg.served_model not in served:
        raise AgentServerError(f"the server at VLLM_BASE_URL={url} serves {public_text(served[:20])}, not "
                               f"MODEL_NAME={cfg.served_model}; set MODEL_NAME (or --served_model) to one of them.")
    return served


def _text(content: Any) -> str:
    """Message content as text (OpenAI content may be a list of parts)."""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def ask(agent, cfg: AgentConfig, history: list, question: str, write: Callable[[str], Any] = sys.stdout.write,
        on_message: Callable[[Any], Any] | None = None) -> list:
    """Answer one question with streaming (tool calls shown when cfg.verbose); returns the extended history.

    `on_message` sees each complete message as it is added (tool calls, tool results, answers): the web page
    draws its tool boxes from them."""
    import httpx
    import openai
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.errors import GraphRecursionError

    messages = list(history) + [HumanMessage(escape_control_tokens(question))]  # typed text cannot forge a turn
    # The middleware stops before model turn max_steps + 1 (StepLimit); LangGraph's own step count (model, tools
    # and middleware nodes) is only a backstop, so an answer that comes exactly at max_steps is never cut.
    config = {"recursion_limit": 4 * cfg.max_steps + 10}
    url = server_label(cfg.base_url)
    streamed = False
    try:
        for mode, data in agent.stream({"messages": messages}, config=config, stream_mode=["messages", "updates"]):
            if mode == "messages":
                chunk, meta = data
                if meta.get("langgraph_node") == "model" and isinstance(chunk, AIMessage) and _text(chunk.content):
                    write(_text(chunk.content))
                    streamed = True
                continue
            for node, update in (data or {}).items():
                for message in (update or {}).get("messages", []) if isinstance(update, dict) else []:
                    messages.append(message)
                    if on_message is not None:
                        on_message(message)
                    if streamed and node == "model":
                        write("\n")
                        streamed = False
                    if cfg.verbose and isinstance(message, AIMessage):
                        for call in message.tool_calls:
                            write(f"[tool call] {call['name']}({json.dumps(call['args'], ensure_ascii=False)})\n")
                    if cfg.verbose and isinstance(message, ToolMessage):
                        write(f"[tool result] {message.name}: {_text(message.content)}\n")
    except (GraphRecursionError, StepLimit):
        write(f"\n[stopped: no final answer within max_steps={cfg.max_steps} model turns]\n")
    except (openai.APIConnectionError, openai.APITimeoutError) as err:
        raise AgentServerError(f"lost the model server at VLLM_BASE_URL={url} ({type(err).__name__}); "
                               f"is `bash agent/serve_vllm.sh` still running?") from None
    except openai.APIStatusError as err:
        raise AgentServerError(f"the server at VLLM_BASE_URL={url} answered HTTP {err.status_code}: "
                               f"{public_text(err, [cfg.api_key])}") from None
    except (openai.APIError, httpx.HTTPError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        # HTML instead of JSON, a cut stream, a reply without choices: a bad server, not a reason to end the session
        raise AgentServerError(f"the server at VLLM_BASE_URL={url} sent a reply that is not an OpenAI chat "
                               f"completion ({type(err).__name__}: {public_text(err, [cfg.api_key], 200)}); "
                               "check that it is an OpenAI-compatible server (vLLM) and try again") from None
    return messages


def final_answer(history: list) -> str:
    """The text of the last assistant message (the answer to the last question)."""
    from langchain_core.messages import AIMessage

    for message in reversed(history):
        if isinstance(message, AIMessage):
            return _text(message.content)
    return ""
