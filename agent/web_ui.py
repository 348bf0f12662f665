"""A web page for the assistant: chat, the agent's tool calls, RAG answers with their sources, and the base model
beside the LoRA adapter, over the server agent/serve_vllm.sh starts.

    make web                                   # starts the server with the demo adapter if needed, then the page
    bash agent/serve_vllm.sh                   # or: the server yourself, then
    python agent/web_ui.py                     # http://127.0.0.1:7860
    python agent/web_ui.py --host 0.0.0.0 --port 8080     # other machines may open it (it has no login)

Server URL and adapter name come from VLLM_BASE_URL and MODEL_NAME (or .env, or --base_url / --served_model).
"""

import sys

from medqwen.cli import run_script
from medqwen.web_config import WebConfig
from medqwen.web_ui import launch


def main(cfg: WebConfig) -> None:
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: --host {cfg.host} shows the page (and the model server behind it) to other machines; "
              "it has no login.", file=sys.stderr)
    print(f"page: http://{cfg.host}:{cfg.port}  (Ctrl-C stops it)")
    launch(cfg)


if __name__ == "__main__":
    run_script(WebConfig, main)
