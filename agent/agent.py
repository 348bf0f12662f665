"""A tool-calling agent (calculator, weather, time) over the vLLM server that agent/serve_vllm.sh starts.

    bash agent/serve_vllm.sh                                   # first, in another terminal
    python agent/agent.py                                      # interactive; /reset clears history, exit quits
    python agent/agent.py --query "帮我计算 (12 + 8) * 3"
    python agent/agent.py --query "明天北京天气怎么样？" --verbose  # shows tool calls and results
    OPENWEATHER_API_KEY=... python agent/agent.py              # the weather tool needs a free key

Server URL and model name come from VLLM_BASE_URL and MODEL_NAME (or .env, or --base_url / --model).
"""

import sys

from medqwen.agent import AgentServerError, ask, build_agent, check_server
from medqwen.config import AgentConfig
from medqwen.configlib import parse_config


def repl(agent, cfg: AgentConfig) -> None:
    """Interactive chat with history; answers stream as they are generated."""
    try:
        import readline  # noqa: F401 -- arrow keys and line history for input()
    except ImportError:
        pass
    print(f"agent on {cfg.base_url} ({cfg.served_model}); /reset clears the history, exit or Ctrl-D quits")
    history: list = []
    while True:
        try:
            question = input("\nyou> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return
        if question in ("exit", "quit", "/exit"):
            return
        if question == "/reset":
            history = []
            continue
        if not question:
            continue
        print("agent> ", end="", flush=True)
        try:
            history = ask(agent, cfg, history, question, write=lambda s: print(s, end="", flush=True))
        except AgentServerError as err:
            print(f"\nerror: {err}")
        except KeyboardInterrupt:
            print("\n[interrupted]")


def main(cfg: AgentConfig) -> int:
    try:
        check_server(cfg)
        agent = build_agent(cfg)
        if cfg.query is None:
            repl(agent, cfg)
        else:
            ask(agent, cfg, [], cfg.query, write=lambda s: print(s, end="", flush=True))
            print()
    except AgentServerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_config(AgentConfig)))
