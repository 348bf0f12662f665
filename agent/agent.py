"""A tool-calling agent (calculator, weather, time) over the vLLM server that agent/serve_vllm.sh starts.

    bash agent/serve_vllm.sh                                   # first, in another terminal
    python agent/agent.py                                      # interactive; /reset clears history, exit quits
    python agent/agent.py --query "帮我计算 (12 + 8) * 3"
    python agent/agent.py --query "明天北京天气怎么样？" --verbose  # shows tool calls and results
    OPENWEATHER_API_KEY=... python agent/agent.py              # the weather tool needs a free key

Server URL and model name come from VLLM_BASE_URL and MODEL_NAME (or .env, or --base_url / --model).
"""


from medqwen.agent.agent import AgentServerError, ask, build_agent, check_server
from medqwen.agent.config import AgentConfig
from medqwen.cli import run_script
from medqwen.repl import HELP, repl
from medqwen.safe_http import strip_userinfo


def chat(agent, cfg: AgentConfig) -> None:
    """Interactive chat with history; answers stream as they are generated. A server error is reported and the
    session goes on with the history it had before that question."""
    print(f"agent on {strip_userinfo(cfg.base_url)} ({cfg.served_model}); {HELP}")
    history: list = []

    def answer(question: str) -> None:
        nonlocal history
        print("agent> ", end="", flush=True)
        try:
            history = ask(agent, cfg, history, question, write=lambda s: print(s, end="", flush=True))
        except AgentServerError as err:
            print(f"\nerror: {err}")

    repl(answer, on_reset=lambda: history.clear())


def main(cfg: AgentConfig) -> None:
    check_server(cfg)
    agent = build_agent(cfg)
    if cfg.query is None:
        chat(agent, cfg)
    else:
        ask(agent, cfg, [], cfg.query, write=lambda s: print(s, end="", flush=True))
        print()


if __name__ == "__main__":
    run_script(AgentConfig, main)
