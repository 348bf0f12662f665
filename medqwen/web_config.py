"""The web page's config (agent/web_ui.py)."""

from __future__ import annotations

from dataclasses import dataclass

from medqwen.configlib import SamplingFields, ServerFields, _f


@dataclass
class WebConfig(SamplingFields, ServerFields):
    """agent/web_ui.py: a Gradio page (chat, agent with tool boxes, RAG with sources, base vs adapter side by side)
    over the OpenAI-compatible server agent/serve_vllm.sh starts; served_model is the fine-tuned model."""

    host: str = _f("127.0.0.1", "Address the page binds to; 0.0.0.0 shows it to other machines (no login!).")
    port: int = _f(7860, "TCP port of the page.", at_least=1, at_most=65535)
    share: bool = _f(False, "Also open a public Gradio share link (off: the page stays on this machine).")
    base_model: str | None = _f(None, "Served name of the base model for compare mode (None: the first model the "
                                      "server lists that is not served_model).")
    system_prompt: str | None = _f(None, "System message of chat mode (None: none; the chat template's default).")
    max_tokens: int = _f(512, "Longest reply per model turn (tokens).", at_least=1)
    max_input_chars: int = _f(8000, "Longest message a user may send (characters); longer ones are refused with a "
                                    "message.", at_least=1)
    persist_dir: str = _f("out/rag/chroma", "Knowledge store of RAG mode (built by agent/embedding.py); the other "
                                            "store and retrieval settings are agent/rag_query.py's (RAG_* variables).",
                          env="RAG_PERSIST_DIR")
    top_k: int = _f(3, "Passages retrieved per RAG question.", at_least=1)
