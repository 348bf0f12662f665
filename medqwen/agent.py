"""The tool-calling agent: LangChain 1.x `create_agent` over an OpenAI-compatible server (vLLM), with the tools
of medqwen/tools.py.

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

from medqwen.config import AgentConfig
from medqwen.tools import MAX_EXPRESSION_CHARS, calculate, get_current_time, get_weather

DEFAULT_SYSTEM_PROMPT = ("You are a helpful assistant. When a question needs arithmetic, the weather or the current "
                         "time, call the matching tool and answer from its result; otherwise answer directly. "
                         "Reply in the language of the question.")


class AgentServerError(RuntimeError):
    """The model server is unreachable, too slow, or does not serve the configured model."""


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


def _tool_settings_middleware(force_tool: str | None, strict: bool):
    """Middleware: strict tool schemas; `force_tool` on the first model turn of each question only (a forced
    choice on every turn would loop forever); any exception a tool raises goes back to the model as text."""
    from langchain.agents.middleware import AgentMiddleware
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    class ToolSettings(AgentMiddleware):
        def wrap_model_call(self, request, handler):
            settings = {**request.model_settings, **({"strict": True} if strict else {})}
            last_human = max((i for i, m in enumerate(request.messages) if isinstance(m, HumanMessage)), default=-1)
            first_turn = not any(isinstance(m, AIMessage) for m in request.messages[last_human + 1:])
            choice = {"type": "function", "function": {"name": force_tool}} if force_tool and first_turn else None
            return handler(request.override(model_settings=settings, tool_choice=choice or request.tool_choice))

        def wrap_tool_call(self, request, handler):
            try:
                return handler(request)
            except Exception as err:  # noqa: BLE001 -- the model reads the error and may retry; the agent lives on
                return ToolMessage(content=f"Error: {type(err).__name__}: {err}", status="error",
                                   tool_call_id=request.tool_call["id"], name=request.tool_call["name"])

    return ToolSettings()


def build_agent(cfg: AgentConfig, extra_tools: Sequence = (), llm=None):
    """A LangGraph agent: ChatOpenAI on cfg.base_url/cfg.model (or `llm`) with the default tools + `extra_tools`."""
    from langchain.agents import create_agent
    from langchain_openai import ChatOpenAI

    if llm is None:
        llm = ChatOpenAI(base_url=cfg.base_url, model=cfg.model, api_key=cfg.api_key or "EMPTY",
                         temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                         timeout=cfg.timeout_s, max_retries=1)
    from medqwen.rag.answer import knowledge_base_tools  # [] unless a store from agent/embedding.py exists

    tools = build_tools(cfg) + knowledge_base_tools() + list(extra_tools)
    names = [t.name for t in tools]
    if cfg.force_tool and cfg.force_tool not in names:
        raise ValueError(f"force_tool '{cfg.force_tool}' is not one of the tools {names}")
    return create_agent(llm, tools, system_prompt=cfg.system_prompt or DEFAULT_SYSTEM_PROMPT,
                        middleware=[_tool_settings_middleware(cfg.force_tool, cfg.strict_tools)])


def served_models(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> list[str]:
    """The model names the server lists at /models; AgentServerError naming VLLM_BASE_URL when it is down."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(base_url.rstrip("/") + "/models", headers=headers, timeout=timeout_s)
        response.raise_for_status()
        return [m["id"] for m in response.json()["data"]]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as err:
        raise AgentServerError(
            f"no OpenAI-compatible server answers at VLLM_BASE_URL={base_url} ({type(err).__name__}: {err}).\n"
            "Start it with `bash agent/serve_vllm.sh`, or point VLLM_BASE_URL (or --base_url) at your server.") from None


def check_server(cfg: AgentConfig, timeout_s: float = 5.0) -> list[str]:
    """The served model names; AgentServerError naming VLLM_BASE_URL when the server is down or lacks cfg.model."""
    served = served_models(cfg.base_url, cfg.api_key, timeout_s)
    if cfg.model not in served:
        raise AgentServerError(f"the server at VLLM_BASE_URL={cfg.base_url} serves {served}, not "
                               f"MODEL_NAME={cfg.model}; set MODEL_NAME (or --model) to one of them.")
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
    import openai
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
    from langgraph.errors import GraphRecursionError

    messages = list(history) + [HumanMessage(question)]
    # LangGraph counts graph steps: model, tools, model, tools, ..., model = 2 * max_steps - 1 for max_steps turns.
    config = {"recursion_limit": max(1, 2 * cfg.max_steps - 1)}
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
    except GraphRecursionError:
        write(f"\n[stopped: no final answer within max_steps={cfg.max_steps} model turns]\n")
    except (openai.APIConnectionError, openai.APITimeoutError) as err:
        raise AgentServerError(f"lost the model server at VLLM_BASE_URL={cfg.base_url} ({type(err).__name__}); "
                               f"is `bash agent/serve_vllm.sh` still running?") from None
    except openai.APIStatusError as err:
        raise AgentServerError(f"the server at VLLM_BASE_URL={cfg.base_url} answered HTTP {err.status_code}: "
                               f"{str(err)[:300]}") from None
    return messages


def final_answer(history: list) -> str:
    """The text of the last assistant message (the answer to the last question)."""
    from langchain_core.messages import AIMessage

    for message in reversed(history):
        if isinstance(message, AIMessage):
            return _text(message.content)
    return ""
