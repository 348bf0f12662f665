"""The agent's configs: agent/agent.py, its tool-use training data (data/make_tool_data.py) and its
evaluation (agent/eval_agent.py)."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import SamplingFields, ServerFields, _f, like


@dataclass
class AgentConfig(SamplingFields, ServerFields):
    """agent/agent.py: a LangChain tool-calling agent (calculator, weather, time) over an OpenAI-compatible
    server such as the one agent/serve_vllm.sh starts."""

    served_model: str = like(ServerFields, "served_model", aliases=["model"])
    query: str | None = _f(None, "One question, answered and exit; without it an interactive chat starts.")
    system_prompt: str | None = _f(None, "System message (None: medqwen.agent.agent.DEFAULT_SYSTEM_PROMPT).")
    verbose: bool = _f(False, "Print every tool call with its arguments and result.")
    max_tokens: int = _f(1024, "Longest reply per model turn (tokens).", at_least=1)
    max_steps: int = _f(8, "Most model turns per question (each tool round is one turn); then the agent stops.",
                        at_least=1)
    max_tool_calls: int = _f(8, "Most tool calls run per model turn; further calls in the same turn are refused "
                                "with a message to the model (bounds API requests a single reply can trigger).",
                             at_least=1)
    force_tool: str | None = _f(None, "Make the first model turn call this tool (OpenAI tool_choice); later turns "
                                      "choose freely. For models that do not call tools on their own.")
    strict_tools: bool = _f(True, "Ask the server to keep tool-call arguments to each tool's JSON schema "
                                  "('strict'; vLLM enforces it with structured decoding).")
    openweather_api_key: str | None = _f(None, "OpenWeatherMap API key for get_weather.", env="OPENWEATHER_API_KEY",
                                         secret=True)
    weather_base_url: str = _f("https://api.openweathermap.org", "OpenWeatherMap API root (tests point it at a "
                                                                 "local server).", env="OPENWEATHER_BASE_URL")
    weather_units: str = _f("metric", "Units of get_weather: metric (°C, m/s), imperial (°F, mph), standard (K).",
                            choices=["metric", "imperial", "standard"])
    weather_timeout_s: float = _f(10.0, "Timeout of one weather request (seconds).", above=0)


@dataclass
class ToolDataConfig:
    """data/make_tool_data.py: team-written tool-use conversations (calculator, weather, time) in Chinese and
    English, with hermes-format tool calls, for LoRA training."""

    output: str = _f("data/tool_use.jsonl", "Conversation JSONL to write (each line has 'messages' and 'tools').")
    num_examples: int = _f(400, "Conversations to generate.")
    tools: list[str] = _f(["calculator", "get_weather", "get_current_time"], "Tools the conversations use.")
    languages: list[str] = _f(["zh", "en"], "Languages of the user questions (zh, en).")
    no_tool_ratio: float = _f(0.1, "Fraction of conversations that need no tool (the model must answer directly).")
    heldout_output: str | None = _f(None, "Also write N held-out arithmetic questions with answers here (JSONL).")
    heldout_size: int = _f(30, "Held-out arithmetic questions written to --heldout_output.")
    seed: int = _f(42, "Random seed; the held-out questions use a different stream and never repeat training ones.")


@dataclass
class AgentEvalConfig(AgentConfig):
    """agent/eval_agent.py: the agent answers held-out arithmetic questions; counts calculator calls and
    correct final answers."""

    questions: str = _f("data/heldout_arithmetic.jsonl", "JSONL of {question, answer} written by "
                                                         "data/make_tool_data.py --heldout_output.")
    output_dir: str = _f("out/eval/agent", "Where predictions.jsonl, metrics.json and config.yaml go.")
    limit: int | None = _f(None, "Ask only the first N questions (smoke runs).")
